"""A training run's row in ``training_runs`` and its state transitions outside the job.

Created queued (``create``: the same Celery task id always names the same run), claimed
``queued -> running`` in one conditional UPDATE (``claim``: a run is never trained twice),
cancelled (``cancel``: at once when queued, by request when running), and marked failed when
its worker stopped heartbeating (``reap_stale``, which the producer calls periodically).
What happens while the job runs is :class:`pgfleet.training.run_handle.Run`'s.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import schema
from pgfleet.errors import PgfleetError

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class RunStopped(BaseException):  # noqa: N818 - a state, not an error
    """Raised inside a training job that must stop. A BaseException, like KeyboardInterrupt:
    a job's ``except Exception`` does not swallow it."""


class RunCancelled(RunStopped):
    """Raised inside a training job once its run was cancelled."""


class RunTimeLimit(RunStopped):
    """Raised inside a training job whose run went past its time limit."""


class RunNotClaimed(PgfleetError):
    """The run is not queued any more (running elsewhere, finished or cancelled)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create(conn: psycopg.Connection, task: str, arguments: dict[str, Any],
           *, celery_task_id: str | None = None) -> int:
    """A queued run; the same ``celery_task_id`` always names the same run."""
    row = conn.execute(schema.query("training_run_create"),
                       (task, Jsonb(arguments), celery_task_id)).fetchone()
    if row is None:
        row = conn.execute(schema.query("training_run_by_task_id"),
                           (celery_task_id,)).fetchone()
    if row is None:  # its run was deleted between the two statements
        raise PgfleetError(f"the training run of task {celery_task_id} was neither created "
                           "nor found")
    return int(row[0])


def set_task_id(conn: psycopg.Connection, run_id: int, celery_task_id: str) -> None:
    conn.execute(schema.query("training_run_set_task_id"), (celery_task_id, run_id))


def keep_task_id(conn: psycopg.Connection, run_id: int, celery_task_id: str) -> None:
    """Note the Celery task id of a run started from a message, unless it has one already."""
    conn.execute(schema.query("training_run_keep_task_id"), (celery_task_id, run_id))


def get(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(schema.query("training_run_by_id"), (run_id,)).fetchone()


def listing(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(schema.query("training_runs_listing"), (limit,)).fetchall()


def claim(conn: psycopg.Connection, run_id: int, task: str, worker: str) -> dict[str, Any]:
    """queued -> running, or RunNotClaimed saying why not."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(schema.query("training_run_claim"),
                          (worker, run_id, task)).fetchone()
        if row is not None:
            return row
        current = cur.execute(schema.query("training_run_claim_state"), (run_id,)).fetchone()
    if current is None:
        raise RunNotClaimed(f"training run {run_id} does not exist")
    if current["task"] != task:
        raise RunNotClaimed(f"training run {run_id} is a {current['task']} run, not {task}")
    raise RunNotClaimed(f"training run {run_id} is {current['status']}"
                        + (f" (claimed by {current['worker']})" if current["worker"] else "")
                        + "; a run is never trained twice")


def cancel(conn: psycopg.Connection, run_id: int) -> str:
    """Cancel a queued run at once; ask a running one to stop. Returns the new state."""
    row = conn.execute(schema.query("training_run_cancel"), (run_id,)).fetchone()
    if row is None:
        raise PgfleetError(f"training run {run_id} does not exist")
    return row[0]


def reap_stale(conn: psycopg.Connection, stale_after_s: float) -> list[int]:
    """Mark failed the running runs whose worker stopped heartbeating."""
    rows = conn.execute(schema.query("training_runs_reap_stale"),
                        (int(stale_after_s), stale_after_s)).fetchall()
    ids = [r[0] for r in rows]
    if ids:
        logger.error("training runs %s stopped heartbeating for over %.0f s: marked failed",
                     ids, stale_after_s)
    return ids
