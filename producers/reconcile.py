"""Find work whose wake-up or message was lost, and make it publishable again."""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

import schema
from pgfleet import db
from pgfleet.errors import PgfleetError
from producers import broker

logger = logging.getLogger(__name__)


def requeue_stale(pool: ConnectionPool, older_than_s: float, *, broker_busy: bool = False) -> int:
    """Pending rows published more than ``older_than_s`` ago and still not done (ten times
    that while the broker still holds a backlog)."""
    with db.pooled(pool) as conn, conn.transaction():
        count = conn.execute(schema.query("requeue_stale"), {
            "older_than_s": older_than_s, "broker_busy": broker_busy}).rowcount
    if count:
        logger.warning("republishing %d docs whose messages were published more than %.0f s "
                       "ago and are not done (broker restart, killed worker?)", count, older_than_s)
    return count


def repair(pool: ConnectionPool) -> dict[str, int]:
    """What writes made with triggers off leave behind (replication, ``pg_restore
    --disable-triggers``, ``session_replication_role = replica``): rows of deleted docs
    (vectors, pending rows, failures: the foreign keys' cascades did not run), failures of
    content a doc no longer has (so that ``reconcile_missing`` queues it again), and vectors
    of older content on docs that failed for good. Run before ``reconcile_missing``."""
    with db.pooled(pool) as conn, conn.transaction():
        orphans = db.fetch_one(conn, "reconcile_orphans")
        failures = db.fetch_one(conn, "reconcile_failures")
    assert orphans is not None and failures is not None
    repaired = {"vectors": int(orphans["vectors"]), "pending": int(orphans["pending"]),
                "failures": int(orphans["failures"]) + int(failures["failures"]),
                "superseded": int(failures["superseded"])}
    if any(repaired.values()):
        logger.warning(
            "repaired what writes with triggers off left (replication, a restore?): removed "
            "%(vectors)d vectors and %(pending)d pending rows of deleted docs, cleared "
            "%(failures)d failures of deleted docs or of content they no longer have, and "
            "removed %(superseded)d vectors of content replaced by content that failed",
            repaired)
    return repaired


def reconcile_missing(pool: ConnectionPool, version_id: int | None = None) -> int:
    """Docs with no vector of their current content (none, or one of older content), and no
    pending row or failure, for an active version."""
    with db.pooled(pool) as conn, conn.transaction():
        count = conn.execute(schema.query("reconcile_missing"),
                             {"version_id": version_id}).rowcount
    if count:
        logger.warning("queued %d docs that had no vector of their current content and no "
                       "pending work (a version activated, or docs loaded or changed with "
                       "triggers off?)", count)
    return count


def drop_retired(pool: ConnectionPool, grace_s: float) -> int:
    """Vectors of versions retired more than ``grace_s`` ago (docs' and sources' chunks), and
    pending work of inactive versions."""
    with db.pooled(pool) as conn, conn.transaction():
        row = conn.execute(schema.query("drop_retired_vectors"), {"grace_s": grace_s}).fetchone()
        dropped = int(row[0]) if row else 0
        conn.execute(schema.query("drop_inactive_pending"))
    if dropped:
        logger.info("dropped %d vectors of retired versions", dropped)
    return dropped


def reap_stale_runs(pool: ConnectionPool, stale_after_s: float) -> list[int]:
    """Mark failed the training runs whose worker stopped heartbeating (it died)."""
    from pgfleet.training.runs import reap_stale

    with db.pooled(pool) as conn, conn.transaction():
        return reap_stale(conn, stale_after_s)


def republish_lost_runs(pool: ConnectionPool, app, redis_url: str, lost_after_s: float) -> list[int]:
    """Publish again the training runs still queued after ``lost_after_s`` whose message is
    no longer in the broker (Redis restarted without its data, a queue purged). The same
    task id is used; a run is claimed once, so a message that turns up twice trains once."""
    from workers.queues import QUEUE_TRAINING

    with db.pooled(pool) as conn:
        rows = conn.execute(schema.query("queued_runs_older_than"),
                            {"older_than_s": lost_after_s}).fetchall()
    if not rows:
        return []
    present = broker.task_ids(redis_url, QUEUE_TRAINING)
    if present is None:
        return []
    republished = []
    for run_id, task, arguments, task_id in rows:
        if task_id in present:
            continue
        app.send_task(task, kwargs={"run_id": run_id, **(arguments or {})}, task_id=task_id)
        republished.append(run_id)
    if republished:
        logger.warning("training runs %s were queued for over %.0f s and their messages are no "
                       "longer in the broker (Redis restarted empty?): published again",
                       republished, lost_after_s)
    return republished



def reconcile_sources(pool: ConnectionPool) -> dict[str, int]:
    """For every source: rows deleted with triggers off (their pending rows, chunks and
    failures go), then rows with no chunks of their current text queued as backfill."""
    from pgfleet.sources import catalog

    totals = {"removed": 0, "queued": 0}
    with db.pooled(pool) as conn:
        sources = catalog.list_sources(conn)
    for source in sources:
        try:
            with db.pooled(pool) as conn, conn.transaction():
                removed = catalog.repair(conn, source)
                queued = catalog.backfill(conn, source)
        except PgfleetError as exc:
            logger.error("reconciling source %s failed: %s", source.name, exc)
            continue
        if removed:
            logger.warning("source %s: removed %d pending rows, chunks or failures of rows "
                           "deleted with triggers off (replication, a restore?)", source.name,
                           removed)
        if queued:
            logger.warning("source %s: queued %d rows that had no chunks of their current "
                           "text and no pending work (a version activated, or rows changed "
                           "with triggers off?)", source.name, queued)
        totals["removed"] += removed
        totals["queued"] += queued
    return totals


def requeue_stale_sources(pool: ConnectionPool, older_than_s: float, max_attempts: int, *,
                          broker_busy: bool = False) -> dict[str, int]:
    """Source rows published more than ``older_than_s`` ago and not done: published again,
    or, when a worker started them that long ago (its process died) for the
    ``max_attempts``-th time, recorded as failed."""
    with db.pooled(pool) as conn, conn.transaction():
        row = db.fetch_one(conn, "requeue_stale_sources", {
            "older_than_s": older_than_s, "broker_busy": broker_busy,
            "max_attempts": max_attempts})
    assert row is not None
    counts = {k: int(v) for k, v in row.items()}
    if counts["requeued"]:
        logger.warning("republishing %d source rows published more than %.0f s ago and not "
                       "done (broker restart, killed worker?)", counts["requeued"], older_than_s)
    if counts["given_up"]:
        logger.error("%d source rows were started %d times by workers that died before "
                     "finishing: recorded as failed (pgfleet source failures)",
                     counts["given_up"], max_attempts)
    return counts
