"""The batch-aware embedding task.

Producers publish ``embed_docs(version_id, doc_ids)`` messages; a worker buffers many of them
(celery-batches) and runs them as one batch when it holds ``PGFLEET_BATCH_MAX_DOCS`` doc ids
or ``PGFLEET_BATCH_MAX_WAIT_MS`` has passed, whichever comes first.

Each message gets a result (in the result backend, for ``celery -A workers result ID``): a
summary, or a clear error for malformed arguments, an unknown model version or unknown doc
ids. A batch whose pool process dies is republished at once and acknowledged, after the
death is counted against the docs that process had started (:mod:`pgfleet.embedding.deaths`); those
docs are then embedded one at a time, so that one doc that kills the process cannot take
its neighbours with it (see :mod:`pgfleet.embedding.pipeline`).

celery-batches sends no task events for the messages it buffers: this module sends them
(received, started, succeeded or failed, with each message's result), and one task per
batch, so that Flower shows both (see :mod:`workers.events`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from celery import signals, states
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task
from kombu.utils.uuid import uuid

from pgfleet.embedding import deaths
from pgfleet.embedding.batching import validate_embed_args
from pgfleet.errors import InvalidTaskArguments, PgfleetError, UnknownModelVersion
from pgfleet.settings import Settings
from workers import events, lifecycle
from workers.app import app
from workers.queues import TASK_EMBED

logger = logging.getLogger(__name__)

_settings = Settings.from_env()


class DocBatches(Batches):
    """celery-batches, adjusted:

    * flushes as soon as the buffered messages hold a full batch of doc ids (celery-batches
      alone counts messages, and a message can carry many ids);
    * re-arms its flush timer when the consumer restarts after a broker reconnect (otherwise
      partial batches would never flush again: celery-batches issue #107);
    * acknowledges a batch whose pool process died, after counting the death against the
      docs that process had started and republishing its messages (otherwise they hold
      prefetch slots until the visibility timeout).
    """

    abstract = True
    max_batch_docs = _settings.batch_max_docs

    def Strategy(self, task, app, consumer):  # noqa: N802 - Celery's name
        # called again on every consumer (re)start: a timer from before a reconnect is gone
        self._tref = None
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

    def flush(self, requests):
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        #: the pool's result, which learns the pid of the process that runs the batch
        job: dict[str, Any] = {}

        def on_return(_result: Any) -> None:
            for request in requests:
                request.acknowledge()

        def on_lost(exc_info: Any) -> None:
            error = getattr(exc_info, "exception", exc_info)
            logger.error("the pool process running a batch of %d messages died (%s); "
                         "republishing them", len(requests), error)
            # counted before republishing: a new fetch of these docs must see them as suspects
            deaths.count_death(_settings, getattr(job.get("result"), "_worker_pid", None),
                               [(r.args, r.kwargs) for r in requests],
                               f"the worker process running its batch died: {error}")
            for request in requests:
                why = "the worker process running its batch died"
                try:
                    again = self.app.send_task(
                        self.name, args=request.args, kwargs=request.kwargs,
                        queue=(request.delivery_info or {}).get("routing_key"),
                        ignore_result=True)
                    why += f"; republished as {again.id}"
                except Exception:  # noqa: BLE001 - the producer republishes stale work too
                    logger.exception("republishing message %s failed", request.id)
                _send_from_main(request, events.failed(request.id, why))
                request.acknowledge()

        job["result"] = self._pool.apply_async(
            apply_batches_task, (self, serializable, 0, None), callback=on_return,
            error_callback=on_lost)
        return job["result"]


def _send_from_main(request: Any, event: events.Event) -> None:
    """Send a task event about a buffered message from the worker's main process."""
    type_, fields = event
    fields = {k: v for k, v in fields.items() if k != "uuid"}
    try:
        request.send_event(type_, **fields)
    except Exception:  # noqa: BLE001 - events are a courtesy
        logger.warning("could not send %s for %s", type_, request.id, exc_info=True)


@signals.task_received.connect
def _message_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """celery-batches buffers a message without the ``task-received`` event Celery sends
    for other tasks: send it, so that Flower shows the message as received by this worker."""
    if request is None or getattr(request, "name", None) != TASK_EMBED:
        return
    if not isinstance(getattr(request, "task", None), Batches):
        return  # Celery's own strategy sent the event already
    _send_from_main(request, events.received(request.id, request.name, request.args,
                                             request.kwargs))


def _store(request: Any, state: str, result: Any) -> None:
    try:
        app.backend.store_result(request.id, result, state, request=request)
    except Exception:  # noqa: BLE001 - a result is a courtesy; the work is in PostgreSQL
        logger.warning("could not store the result of %s", request.id, exc_info=True)


def _results_storer(version_id: int, items: list[tuple[Any, list[int]]], unknown: set[int],
                    *, batch_id: str, started: float, emitter: events.Emitter):
    """Each message's result, stored (and sent as its task event) once its batch is
    written; then the batch's own event."""

    def store(report: Any) -> None:
        runtime_s = time.perf_counter() - started
        sent: list[events.Event] = []
        for request, doc_ids in items:
            missing = [d for d in doc_ids if d in unknown]
            if report.error is not None:
                _store(request, states.FAILURE, report.error)
                sent.append(events.failed(request.id, report.error, runtime_s))
            elif missing:
                logger.warning("embed message %s names doc ids that do not exist: %s",
                               request.id, missing[:20])
                error = InvalidTaskArguments(
                    f"doc ids {missing[:20]} do not exist (deleted, or never inserted); "
                    "the others were processed")
                _store(request, states.FAILURE, error)
                sent.append(events.failed(request.id, error, runtime_s))
            else:
                result = {"version_id": version_id, "doc_ids": len(doc_ids),
                          "batch_written": report.written, "batch_failed": len(report.failures),
                          "batch": batch_id}
                _store(request, states.SUCCESS, result)
                sent.append(events.succeeded(request.id, result, runtime_s))
        if report.error is not None:
            sent.append(events.failed(batch_id, report.error, runtime_s))
        else:
            sent.append(events.succeeded(batch_id, events.batch_result(report, runtime_s),
                                         runtime_s))
        emitter.send(sent)

    return store


@app.task(base=DocBatches, name=TASK_EMBED, flush_every=_settings.batch_max_docs,
          flush_interval=_settings.batch_max_wait_ms / 1000.0, acks_late=True,
          ignore_result=True)
def embed_docs(requests: list[Any]) -> dict[str, int]:
    started = time.perf_counter()
    emitter = events.Emitter(app, requests[0].hostname if requests else None)
    emitter.send(events.started(request.id) for request in requests)
    by_version: dict[int, list[tuple[Any, list[int]]]] = defaultdict(list)
    for request in requests:
        try:
            version_id, doc_ids = validate_embed_args(request.args, request.kwargs)
        except InvalidTaskArguments as exc:
            logger.error("rejected embed message %s: %s", request.id, exc)
            _store(request, states.FAILURE, exc)
            emitter.send([events.failed(request.id, exc, time.perf_counter() - started)])
            continue
        by_version[version_id].append((request, doc_ids))
    summary = {"messages": len(requests), "docs": 0, "cache_hits": 0}
    pipeline = lifecycle.pipeline() if by_version else None
    for version_id, items in by_version.items():
        ids = list(dict.fromkeys(d for _, doc_ids in items for d in doc_ids))
        batch_id = uuid()
        emitter.send([events.received(batch_id, events.EMBED_BATCH, (),
                                      events.batch_kwargs(version_id, len(items), len(ids))),
                      events.started(batch_id)])
        try:
            # the write runs in the background, overlapping the next batch's encoding
            report = pipeline.run(version_id, ids, overlap=True)
            unknown = pipeline.unknown_docs(ids, report)
        except Exception as exc:
            _send_failed(emitter, [r for r, _ in items], batch_id, exc, started)
            if isinstance(exc, UnknownModelVersion):
                logger.error("rejected %d embed messages: %s", len(items), exc)
            elif isinstance(exc, PgfleetError):
                # the pending rows stay; the producer republishes them after requeue_after_s
                logger.error("embedding %d docs for version %s failed, left pending: %s",
                             len(ids), version_id, exc)
            else:
                raise
            for request, _ in items:
                _store(request, states.FAILURE, exc)
            continue
        summary["docs"] += len(ids)
        summary["cache_hits"] += report.cache_hits
        pipeline.after_writes(report, _results_storer(
            version_id, items, unknown, batch_id=batch_id, started=started, emitter=emitter))
    return summary


def _send_failed(emitter: events.Emitter, requests: list[Any], batch_id: str,
                 error: BaseException, started: float) -> None:
    runtime_s = time.perf_counter() - started
    emitter.send([*(events.failed(r.id, error, runtime_s) for r in requests),
                  events.failed(batch_id, error, runtime_s)])
