"""Deaths of pool processes, counted where they are known.

A pool process that dies running a batch (SIGKILL, out of memory, a crash inside the model)
is seen by the worker's main process: celery-batches' error callback runs there, and the
pool's result knows the dead process's pid. Only the docs of that batch that this process
had started and not finished (``pending_embeddings.started_by``, its ``host:pid``) spend an
attempt; at ``PGFLEET_MAX_ATTEMPTS`` a doc is recorded as failed ("worker died") and its
vector of older content removed. Fetching, redelivery, republishing and database errors
spend nothing: those are not the doc's fault.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from pgfleet.embedding.batching import validate_embed_args
from pgfleet.errors import InvalidTaskArguments, PgfleetError
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)

#: a dead pool process is counted from the worker's main process, in its event loop: a
#: database that does not answer must not hold it for long (the death is then not counted)
CONNECT_TIMEOUT_S = 2


def process_name(pid: int | None = None) -> str:
    """How a pool process names itself in ``started_by``: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def batch_items(messages: Iterable[tuple[Sequence[Any], dict[str, Any] | None]],
                ) -> list[tuple[int, int]]:
    """The distinct (version_id, doc_id) pairs of a batch's messages (malformed ones skipped:
    they started nothing)."""
    items: dict[tuple[int, int], None] = {}
    for args, kwargs in messages:
        try:
            version_id, doc_ids = validate_embed_args(args, kwargs)
        except InvalidTaskArguments:
            continue
        items.update(((version_id, d), None) for d in doc_ids)
    return list(items)


def record_deaths(conn: psycopg.Connection, *, worker: str, items: Sequence[tuple[int, int]],
                  max_attempts: int, error: str) -> dict[str, int]:
    """Count the death of pool process ``worker`` against the docs among ``items`` it had
    started. Returns how many spent an attempt (``counted``) and how many of those reached
    the limit and were recorded as failed (``given_up``)."""
    from pgfleet import db

    unique = list(dict.fromkeys(items))
    with db.mapped_errors(), conn.transaction():
        row = db.fetch_one(conn, "record_deaths", {
            "worker": worker, "version_ids": [v for v, _ in unique],
            "doc_ids": [d for _, d in unique], "max_attempts": max_attempts,
            "error": error[:2000]})
    assert row is not None
    if row["given_up"]:
        logger.error("docs %s recorded as failed: the worker process died %d times while "
                     "embedding each of them", row["given_up_ids"], max_attempts)
    return {"counted": int(row["counted"]), "given_up": int(row["given_up"])}


def count_death(settings: Settings, pid: int | None,
                messages: Iterable[tuple[Sequence[Any], dict[str, Any] | None]],
                error: str) -> dict[str, int] | None:
    """From the worker's main process: count the death of pool process ``pid`` against the
    docs of the batch it was running. Never raises (a death that cannot be counted is
    logged; the docs are then only republished)."""
    from pgfleet import db
    from pgfleet.settings import resolve_urls

    if pid is None:  # the batch never reached a process: nothing was started
        return None
    items = batch_items(messages)
    if not items:
        return None
    worker = process_name(pid)
    try:
        url = resolve_urls(settings).database_url
        with db.connect(url, autocommit=True, connect_timeout_s=CONNECT_TIMEOUT_S,
                        name="pgfleet-worker-main") as conn:
            counted = record_deaths(conn, worker=worker, items=items,
                                    max_attempts=settings.max_attempts, error=error)
    except PgfleetError as exc:
        logger.error("could not count the death of %s against its docs: %s", worker, exc)
        return None
    except Exception:  # noqa: BLE001 - the batch must still be republished after this
        logger.exception("could not count the death of %s against its docs", worker)
        return None
    logger.warning("pool process %s died: %d of its batch's %d docs spent an attempt "
                   "(%d reached the limit)", worker, counted["counted"], len(items),
                   counted["given_up"])
    return counted
