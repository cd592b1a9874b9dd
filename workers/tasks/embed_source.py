"""``embed_source(source_id, version_id, row_keys)``: a source's rows embedded chunk by chunk.

A message carries up to ``PGFLEET_IDS_PER_MESSAGE`` keys of one source and version (the
producer packs them), so one task is already a batch; it is acknowledged after it ran
(``acks_late``), so a worker that dies mid-task leaves it to be delivered again, and the
rows it had started spend an attempt (``requeue_stale_sources``). Its result is the batch's
summary, or a clear error for malformed arguments or an unknown source or version.
"""

from __future__ import annotations

import logging
from typing import Any

from pgfleet.errors import InvalidTaskArguments, PgfleetError, UnknownModelVersion
from workers import lifecycle
from workers.app import app
from workers.queues import TASK_EMBED_SOURCE

logger = logging.getLogger(__name__)

#: bounds on one message's keys
MAX_KEYS = 10_000
MAX_KEY_CHARS = 1_000


def validate_source_args(source_id: Any, version_id: Any, keys: Any) -> tuple[int, int, list[str]]:
    for name, value in (("source_id", source_id), ("version_id", version_id)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidTaskArguments(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(keys, list | tuple) or not keys:
        raise InvalidTaskArguments("row_keys must be a non-empty list of row keys (strings)")
    if len(keys) > MAX_KEYS:
        raise InvalidTaskArguments(f"at most {MAX_KEYS} row keys a message, got {len(keys)}")
    bad = [k for k in keys if not isinstance(k, str) or not 0 < len(k) <= MAX_KEY_CHARS]
    if bad:
        raise InvalidTaskArguments(f"row keys must be strings of 1 to {MAX_KEY_CHARS} "
                                   f"characters: {bad[:5]!r}")
    return source_id, version_id, list(keys)


@app.task(name=TASK_EMBED_SOURCE, acks_late=True)
def embed_source(source_id: Any, version_id: Any, row_keys: Any) -> dict[str, Any]:
    source_id, version_id, keys = validate_source_args(source_id, version_id, row_keys)
    try:
        report = lifecycle.source_pipeline().run(source_id, version_id, keys)
    except UnknownModelVersion as exc:
        logger.error("rejected embed_source message: %s", exc)
        raise
    except PgfleetError as exc:
        # the rows stay pending; the producer republishes them after requeue_after_s
        logger.error("embedding %d rows of source %s for version %s failed, left pending: %s",
                     len(keys), source_id, version_id, exc)
        raise
    return report.as_json()
