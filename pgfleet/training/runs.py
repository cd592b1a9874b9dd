"""Training runs: one row in ``training_runs`` per job, kept current by the worker.

* **Claimed once.** A run goes ``queued -> running`` in one conditional UPDATE: a message
  delivered twice (or two workers racing) finds it running and trains nothing.
* **Heartbeat.** While it runs, a thread writes ``heartbeat_at`` every ``heartbeat_s`` and
  reads ``cancel_requested``; a run whose heartbeat is older than ``stale_after_s`` (its worker
  died) is marked failed by :func:`reap_stale`, which the producer calls periodically. The
  run's connection is opened again (with backoff) when it is lost.
* **Progress.** ``Run.progress`` records step, total, loss and phase (written at most once a
  second) and raises :class:`RunCancelled` once a cancel was requested.
* **Stopping.** A cancel, or the run's time limit, stops the job even when it never calls
  ``progress``: the heartbeat thread raises the stop in the job's thread; a job that does
  not stop within a grace period (stuck in native code) fails its run and ends its process.
* **Outcome.** succeeded (with the version it produced and its metrics), failed (with the
  error) or cancelled; never left running. Only a running run changes, and only by the
  worker that claimed it: a run already marked failed stays failed, with what its job did
  afterwards noted.

The row and its transitions outside the job (create, claim, cancel, reap) are
:mod:`pgfleet.training.run_record`'s; the job's handle on its run (heartbeat, progress,
stopping, outcome) is :class:`pgfleet.training.run_handle.Run`; this module runs a job under
its run (:func:`execute`) and is where callers import all of it from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import schema
from pgfleet.errors import PgfleetError
from pgfleet.training.loop import optimizer_step, save_loss_curve
from pgfleet.training.run_handle import EXIT_STUCK, MAX_LOSS_POINTS, Run, end_process
from pgfleet.training.run_record import (
    STATUSES,
    RunCancelled,
    RunNotClaimed,
    RunStopped,
    RunTimeLimit,
    cancel,
    claim,
    create,
    get,
    keep_task_id,
    listing,
    reap_stale,
    set_task_id,
    worker_name,
)

__all__ = [
    "EXIT_STUCK", "MAX_LOSS_POINTS", "STATUSES", "Job", "Run", "RunCancelled", "RunNotClaimed",
    "RunStopped", "RunTimeLimit", "cancel", "claim", "create", "end_process", "execute", "get",
    "listing", "optimizer_step", "reap_stale", "save_loss_curve", "set_task_id", "worker_name",
]

logger = logging.getLogger(__name__)


Job = Callable[..., dict[str, Any]]


def execute(conn: psycopg.Connection, database_url: str, *, task: str, job: Job,
            options: dict[str, Any], run_id: int | None, heartbeat_s: float,
            celery_task_id: str | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            time_limit_s: float | None = None, stop_grace_s: float = 60.0,
            on_stuck: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Create (or find) the run, claim it, run ``job(conn, run, **options)`` with a
    heartbeat and a time limit, and record the outcome. A run that is not queued any more is
    not run again: the answer says so (``skipped``)."""
    if run_id is None:
        run_id = create(conn, task, options, celery_task_id=celery_task_id)
    elif celery_task_id:
        keep_task_id(conn, run_id, celery_task_id)
    try:
        row = claim(conn, run_id, task, worker_name())
    except RunNotClaimed as exc:
        logger.warning("not starting %s: %s", task, exc)
        return {"run_id": run_id, "skipped": str(exc)}
    try:
        run = Run(database_url, row, heartbeat_s=heartbeat_s, on_progress=on_progress,
                  time_limit_s=time_limit_s, stop_grace_s=stop_grace_s, on_stuck=on_stuck)
    except psycopg.OperationalError as exc:
        # claimed, but its own connection could not be opened: never leave it running
        message = f"the run's database connection could not be opened: {exc}"
        conn.execute(schema.query("training_run_finish"), {
            "run_id": run_id, "worker": row["worker"], "status": "failed", "error": message,
            "version_id": None, "metrics": Jsonb({}), "artifacts": Jsonb({}), "step": 0,
            "loss": None, "losses": [], "phase": "failed (was: starting)"})
        raise PgfleetError(f"training run {run_id}: {message}") from exc
    logger.info("training run %s (%s) started: %s", run_id, task, options)
    try:
        result = run.call(job, conn, run, **options)
    except BaseException as exc:
        stop = run.stopped[0] if run.stopped is not None else None
        if isinstance(exc, (RunCancelled, KeyboardInterrupt)) or stop is RunCancelled:
            status = run.finish("cancelled", error="interrupted (Ctrl-C)"
                                if isinstance(exc, KeyboardInterrupt) else
                                "cancelled by request")
            logger.info("training run %s (%s) %s", run_id, task, status)
            return {"run_id": run_id, "status": status}
        if isinstance(exc, RunTimeLimit) or stop is RunTimeLimit:
            message = run.stopped[1] if run.stopped is not None else str(exc)
            status = run.finish("failed", error=message)
            logger.error("training run %s (%s) %s: %s", run_id, task, status, message)
            return {"run_id": run_id, "status": status, "error": message}
        message = str(exc) if isinstance(exc, PgfleetError) else f"{type(exc).__name__}: {exc}"
        run.finish("failed", error=message[:4000])
        logger.error("training run %s (%s) failed: %s", run_id, task, message)
        raise
    curve = (result.get("artifacts") or {}).get("loss_curve")
    if curve is None and run.losses and result.get("artifact"):
        curve = save_loss_curve(run.losses, _run_dir(result) / "loss.png", f"{task} run {run_id}")
    status = run.finish("succeeded", version_id=result.get("version_id"),
                        metrics=result.get("metrics") or {},
                        artifacts={**(result.get("artifacts") or {}), "loss_curve": curve},
                        result=result)
    logger.info("training run %s (%s) %s: %s", run_id, task, status,
                f"{result.get('name')}@{result.get('version')}")
    return {**result, "run_id": run_id, "status": status}


def _run_dir(result: dict[str, Any]) -> Path:
    return Path(result.get("artifact") or ".")

