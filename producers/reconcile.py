"""Find work whose wake-up or message was lost, and make it publishable again."""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

import schema
from workers import db

logger = logging.getLogger(__name__)


def requeue_stale(pool: ConnectionPool, older_than_s: float) -> int:
    """Pending rows published more than ``older_than_s`` ago and still not done."""
    with db.pooled(pool) as conn, conn.transaction():
        count = conn.execute(schema.query("requeue_stale"), {"older_than_s": older_than_s}).rowcount
    if count:
        logger.warning("republishing %d docs whose messages were published more than %.0f s "
                       "ago and are not done (broker restart, killed worker?)", count, older_than_s)
    return count


def reconcile_missing(pool: ConnectionPool) -> int:
    """Docs with no current vector, pending row or failure for an active version."""
    with db.pooled(pool) as conn, conn.transaction():
        count = conn.execute(schema.query("reconcile_missing")).rowcount
    if count:
        logger.warning("queued %d docs that had no vector and no pending work "
                       "(loaded with triggers off, or restored?)", count)
    return count
