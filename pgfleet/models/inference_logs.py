"""Inference logs: the row a request answered on its own (a search, a text2sql answer)
leaves in ``inference_logs``, which the A/B report, the metrics and ``pgfleet bench`` read.

An embedding batch's row is not written here: it is part of the batch's own statement
(``write_batch``), in the same transaction as its vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg

from pgfleet import db

#: how many hex digits of the key's SHA-256 each task stores as ``request_key`` (stored data:
#: kept as each task has always written it)
REQUEST_KEY_HEX = {"search": 16, "text2sql": 32}


def row(task: str, *, version_id: int | None, latency_ms: float,
        assigned_version_id: int | None = None, batch_size: int = 1, cache_hits: int = 0,
        model_calls: int = 1, worker: str | None = None, key: str | None = None,
        results: Sequence[int] | None = None, error: str | None = None) -> dict[str, Any]:
    """Every column of one log row. ``key`` (a user or session id, or what identifies the
    request) is stored hashed, never as given; without one the row has no request key."""
    request_key = (hashlib.sha256(key.encode()).hexdigest()[:REQUEST_KEY_HEX[task]]
                   if key is not None else None)
    return {"version_id": version_id, "assigned_version_id": assigned_version_id,
            "task": task, "latency_ms": latency_ms, "batch_size": batch_size,
            "cache_hits": cache_hits, "model_calls": model_calls, "worker": worker,
            "request_key": request_key,
            "results": list(results) if results is not None else None, "error": error}


def write(conn: psycopg.Connection, log: dict[str, Any]) -> int:
    """Insert a row made by :func:`row`; its id."""
    inserted = db.fetch_one(conn, "log_inference", log)
    if inserted is None:   # INSERT ... RETURNING returns the row it inserted
        raise AssertionError(f"logging a {log['task']} request returned no id")
    return int(inserted["id"])
