"""The batch-aware embedding task.

Producers publish ``embed_docs(version_id, doc_ids)`` messages; a worker buffers many of them
(celery-batches) and runs them as one batch when it holds ``PGFLEET_BATCH_MAX_DOCS`` doc ids
or ``PGFLEET_BATCH_MAX_WAIT_MS`` has passed, whichever comes first.
"""

from __future__ import annotations

import logging
from typing import Any

from celery_batches import Batches

from workers import lifecycle
from workers.app import app
from workers.batching import group_by_version, validate_embed_args
from workers.errors import InvalidTaskArguments, PgfleetError
from workers.queues import TASK_EMBED
from workers.settings import Settings

logger = logging.getLogger(__name__)

_settings = Settings.from_env()


class DocBatches(Batches):
    """celery-batches that also flushes as soon as the buffered messages hold a full batch
    of doc ids (celery-batches alone counts messages, and a message can carry many ids)."""

    abstract = True
    max_batch_docs = _settings.batch_max_docs

    def Strategy(self, task, app, consumer):  # noqa: N802 - Celery's name
        handler = super().Strategy(task, app, consumer)

        def counting_handler(message, body, ack, reject, callbacks, **kw):
            handler(message, body, ack, reject, callbacks, **kw)
            if self._buffered_docs() >= self.max_batch_docs:
                self._do_flush()

        return counting_handler

    def _buffered_docs(self) -> int:
        total = 0
        for request in list(self._buffer.queue):
            try:
                total += max(1, len(request.args[1]))
            except (TypeError, IndexError, AttributeError):
                total += 1
        return total


@app.task(base=DocBatches, name=TASK_EMBED, flush_every=_settings.batch_max_docs,
          flush_interval=_settings.batch_max_wait_ms / 1000.0, acks_late=True,
          ignore_result=True)
def embed_docs(requests: list[Any]) -> dict[str, int]:
    jobs = []
    for request in requests:
        try:
            jobs.append(validate_embed_args(request.args, request.kwargs))
        except InvalidTaskArguments as exc:
            logger.error("rejected embed message %s: %s", request.id, exc)
    summary = {"messages": len(requests), "docs": 0, "written": 0, "cache_hits": 0,
               "failed": 0}
    for version_id, doc_ids in group_by_version(jobs).items():
        try:
            report = lifecycle.pipeline().run(version_id, doc_ids)
        except PgfleetError as exc:
            # the pending rows stay; the producer republishes them after requeue_after_s
            logger.error("embedding %d docs for version %s failed, left pending: %s",
                         len(doc_ids), version_id, exc)
            continue
        summary["docs"] += report.requested
        summary["written"] += report.written
        summary["cache_hits"] += report.cache_hits
        summary["failed"] += len(report.failures)
    return summary
