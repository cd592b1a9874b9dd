"""``pgfleet status``: per model version docs, embedded, pending, failed, lag; workers online."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from workers import db

logger = logging.getLogger(__name__)


def version_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = db.fetch_all(conn, "version_status")
    return [{
        "id": r["id"], "name": r["name"], "version": r["version"], "format": r["format"],
        "status": r["status"], "active": r["active"], "docs": int(r["docs"]),
        "embedded": int(r["embedded"]), "pending": int(r["pending"]), "failed": int(r["failed"]),
        "oldest_pending_s": (round(float(r["oldest_pending_s"]), 3)
                             if r["oldest_pending_s"] is not None else None),
    } for r in rows]


def workers_online(redis_url: str, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """Workers that answer a broadcast within ``timeout_s``, with the queues they consume."""
    from workers.app import create_app
    from workers.settings import Settings

    app = create_app(Settings.from_env())
    app.conf.broker_url = redis_url
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - a status page must still render
        logger.warning("cannot ask workers: %s", exc)
        return []
    finally:
        app.close()
    return [{"name": name, "queues": sorted(q["name"] for q in queues)}
            for name, queues in sorted(replies.items())]


def recent_failures(conn: psycopg.Connection, limit: int = 10) -> list[dict[str, Any]]:
    return [{"doc_id": r["doc_id"], "version": r["version"], "reason": r["reason"],
             "attempts": r["attempts"], "last_error": r["last_error"],
             "last_failed_at": r["last_failed_at"].isoformat()}
            for r in db.fetch_all(conn, "list_failures", {"limit": limit})]


def collect(conn: psycopg.Connection, redis_url: str) -> dict[str, Any]:
    return {"versions": version_rows(conn), "workers": workers_online(redis_url),
            "failures": recent_failures(conn)}
