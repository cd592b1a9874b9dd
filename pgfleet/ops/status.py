"""``pgfleet status``: what an operator looks at, gathered in one place.

Per model version: docs, embedded, coverage, pending, failed and lag (oldest pending age);
the Celery queues with their depth in Redis and who consumes them; the workers with their
queues and last heartbeat; A/B splits; recent training runs; recent failures.

Workers are asked two ways at once, neither through Flower: a broadcast (the queues each one
consumes) and their events (a heartbeat is requested as the listener subscribes, so every
live worker reports within the broadcast's timeout). With ``--watch`` the listener stays
on, and a worker that stops answering keeps its last heartbeat's age.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import psycopg

from pgfleet import db
from pgfleet.models import stats
from producers import broker
from workers.queues import ALL_QUEUES

logger = logging.getLogger(__name__)


def version_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = db.fetch_all(conn, "version_status")
    return [{
        "id": r["id"], "name": r["name"], "version": r["version"], "format": r["format"],
        "status": r["status"], "active": r["active"], "docs": int(r["docs"]),
        "embedded": int(r["embedded"]), "pending": int(r["pending"]), "failed": int(r["failed"]),
        "coverage": coverage(int(r["embedded"]), int(r["docs"])),
        "oldest_pending_s": (round(float(r["oldest_pending_s"]), 3)
                             if r["oldest_pending_s"] is not None else None),
    } for r in rows]


def source_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per source and active version of its model: rows embedded, chunks, pending, failed
    and lag."""
    return [{"source": r["source"], "version": f"{r['name']}@{r['version']}",
             "embedded": int(r["embedded"]), "chunks": int(r["chunks"]),
             "pending": int(r["pending"]), "failed": int(r["failed"]),
             "oldest_pending_s": (round(float(r["oldest_pending_s"]), 3)
                                  if r["oldest_pending_s"] is not None else None)}
            for r in db.fetch_all(conn, "source_status")]


def coverage(embedded: int, docs: int) -> float | None:
    """The share of docs with a vector, to 4 places (None when there are no docs)."""
    ratio = stats.coverage(embedded, docs)
    return round(ratio, 4) if ratio is not None else None


def recent_failures(conn: psycopg.Connection, limit: int = 10) -> list[dict[str, Any]]:
    return [{"doc_id": r["doc_id"], "version": r["version"], "reason": r["reason"],
             "attempts": r["attempts"], "last_error": r["last_error"],
             "last_failed_at": r["last_failed_at"].isoformat()}
            for r in db.fetch_all(conn, "list_failures", {"limit": limit})]


def ab_splits(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per model name, the active versions and their traffic (0: shadow), and the last
    change of the split."""
    splits: dict[str, dict[str, Any]] = {}
    for r in db.fetch_all(conn, "ab_splits"):
        entry = splits.setdefault(r["name"], {
            "name": r["name"], "kind": r["kind"], "split": {},
            "last_action": r["last_action"],
            "changed_at": r["changed_at"].isoformat() if r["changed_at"] else None})
        entry["split"][r["version"]] = r["traffic_percent"]
    return list(splits.values())


def training_runs(conn: psycopg.Connection, limit: int = 5) -> list[dict[str, Any]]:
    from pgfleet.training import runs

    now = dt.datetime.now(dt.UTC)
    return [{
        "id": r["id"], "task": r["task"], "status": r["status"], "step": r["step"],
        "total_steps": r["total_steps"], "phase": r["phase"], "loss": r["loss"],
        "heartbeat_age_s": (round((now - r["heartbeat_at"]).total_seconds(), 1)
                            if r["heartbeat_at"] and r["status"] == "running" else None),
        "produced": r.get("produced"), "error": r["error"],
        "created_at": r["created_at"].isoformat(),
    } for r in runs.listing(conn, limit)]


def _app(redis_url: str):
    from pgfleet.settings import Settings
    from workers.app import create_app

    app = create_app(Settings.from_env())
    app.conf.broker_url = redis_url
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    return app


class WorkerWatch:
    """The fleet's workers: their queues (asked by broadcast) and their heartbeats (events,
    heard on a thread of its own)."""

    def __init__(self, redis_url: str, timeout_s: float = 1.0):
        self.app = _app(redis_url)
        self.timeout_s = timeout_s
        self.state = self.app.events.State()
        self._receiver: Any = None
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkerWatch:
        self._thread = threading.Thread(target=self._listen, name="pgfleet-status-events",
                                        daemon=True)
        self._thread.start()
        # heartbeats are requested once subscribed: wait for it (briefly: status must show)
        self._subscribed.wait(self.timeout_s)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(2.0)
        self.app.close()

    def _listen(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                receiver = self.app.events.Receiver(conn, handlers={"*": self.state.event})
                iterations = [0]

                def on_iteration() -> None:
                    # Redis subscribes on the first poll: only from the second on will the
                    # heartbeats asked for be heard
                    iterations[0] += 1
                    if iterations[0] == 2:
                        receiver.wakeup_workers()
                        self._subscribed.set()

                receiver.on_iteration = on_iteration
                self._receiver = receiver
                for _ in receiver.consume(limit=None, timeout=None, safety_interval=0.1,
                                          wakeup=False):
                    pass
        except Exception as exc:  # noqa: BLE001 - the broadcast still answers, or says why
            logger.debug("listening to worker events failed: %s", exc)
        finally:
            self._subscribed.set()

    def snapshot(self) -> list[dict[str, Any]]:
        try:
            replies = self.app.control.inspect(timeout=self.timeout_s).active_queues() or {}
        except Exception as exc:  # noqa: BLE001 - a status page must still render
            logger.warning("cannot ask workers: %s", exc)
            replies = {}
        return merge_workers(replies, _heard(self.state), now=time.time())


def _heard(state: Any) -> dict[str, dict[str, Any]]:
    heard = {}
    for name, worker in list(state.workers.items()):
        heartbeats = list(worker.heartbeats or [])
        heard[name] = {"last_heartbeat": heartbeats[-1] if heartbeats else None}
    return heard


def merge_workers(replies: dict[str, list[dict[str, Any]]], heard: dict[str, dict[str, Any]],
                  *, now: float) -> list[dict[str, Any]]:
    """One row per worker that answered the broadcast or was heard from: ``online`` when it
    answered; its queues; its last heartbeat's age when heard. (Not the heartbeat's task
    counts: Celery does not count the messages celery-batches runs, so they would read 0
    for the embedding workers.)"""
    rows = []
    for name in sorted(set(replies) | set(heard)):
        events = heard.get(name, {})
        last = events.get("last_heartbeat")
        rows.append({
            "name": name, "online": name in replies,
            "queues": sorted(q["name"] for q in replies.get(name, [])),
            "last_heartbeat_age_s": round(max(0.0, now - last), 1) if last else None,
        })
    return rows


def workers_online(redis_url: str, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """Workers that answer within ``timeout_s`` or were heard from meanwhile."""
    with WorkerWatch(redis_url, timeout_s) as watch:
        return watch.snapshot()


def api_status(url: str | None, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The HTTP API at ``url``: up (its /healthz answered) and its loaded engines; None when
    no API is configured or started by ``pgfleet up``."""
    import json
    import urllib.error
    import urllib.request

    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout_s) as r:
            health = json.loads(r.read())
    except (OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()   # it holds the response's socket
        return {"url": url, "up": False, "error": str(exc), "engines": []}
    return {"url": url, "up": bool(health.get("ok")), "engines": health.get("engines", [])}


def collect(conn: psycopg.Connection, redis_url: str, *,
            watch: WorkerWatch | None = None, api_url: str | None = None) -> dict[str, Any]:
    """Everything ``pgfleet status`` shows (``--json`` prints exactly this)."""
    data = collect_database(conn)
    data["api"] = api_status(api_url)
    workers = watch.snapshot() if watch is not None else workers_online(redis_url)
    queues = broker.depths(redis_url, ALL_QUEUES, timeout_s=1.0)
    data.update(workers=workers, queues=queue_rows(queues, workers))
    return data


def collect_database(conn: psycopg.Connection) -> dict[str, Any]:
    return {"generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "versions": version_rows(conn), "sources": source_rows(conn),
            "failures": recent_failures(conn),
            "ab": ab_splits(conn), "training": training_runs(conn)}


def queue_rows(queues: list[dict[str, Any]] | None,
               workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each queue's depth (None: Redis could not be asked) and the online workers that
    consume it."""
    depths = {q["name"]: q["depth"] for q in queues or []}
    return [{"name": name, "depth": depths.get(name) if queues is not None else None,
             "consumers": [w["name"] for w in workers if w["online"] and name in w["queues"]]}
            for name in ALL_QUEUES]
