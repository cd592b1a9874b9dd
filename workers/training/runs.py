"""Training runs: one row in ``training_runs`` per job, kept current by the worker.

* **Claimed once.** A run goes ``queued -> running`` in one conditional UPDATE: a message
  delivered twice (or two workers racing) finds it running and trains nothing.
* **Heartbeat.** While it runs, a thread writes ``heartbeat_at`` every ``heartbeat_s`` and
  reads ``cancel_requested``; a run whose heartbeat is older than ``stale_after_s`` (its worker
  died) is marked failed by :func:`reap_stale`, which the producer calls periodically.
* **Progress.** ``Run.progress`` records step, total, loss and phase (written at most once a
  second) and raises :class:`RunCancelled` once a cancel was requested.
* **Outcome.** succeeded (with the version it produced and its metrics), failed (with the
  error) or cancelled; never left running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from workers.errors import PgfleetError

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
#: at most this many loss points are kept per run (every step, thinned when longer)
MAX_LOSS_POINTS = 2000


class RunCancelled(Exception):  # noqa: N818 - a state, not an error
    """Raised inside a training loop once its run was cancelled."""


class RunNotClaimed(PgfleetError):
    """The run is not queued any more (running elsewhere, finished or cancelled)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create(conn: psycopg.Connection, task: str, arguments: dict[str, Any],
           *, celery_task_id: str | None = None) -> int:
    """A queued run; the same ``celery_task_id`` always names the same run."""
    row = conn.execute(
        "INSERT INTO training_runs (task, arguments, celery_task_id) VALUES (%s, %s, %s) "
        "ON CONFLICT (celery_task_id) DO NOTHING RETURNING id",
        (task, Jsonb(arguments), celery_task_id)).fetchone()
    if row is None:
        row = conn.execute("SELECT id FROM training_runs WHERE celery_task_id = %s",
                           (celery_task_id,)).fetchone()
    return int(row[0])


def set_task_id(conn: psycopg.Connection, run_id: int, celery_task_id: str) -> None:
    conn.execute("UPDATE training_runs SET celery_task_id = %s WHERE id = %s",
                 (celery_task_id, run_id))


def get(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM training_runs WHERE id = %s", (run_id,)).fetchone()


def listing(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT r.*, v.name || '@' || v.version AS produced FROM training_runs r "
            "LEFT JOIN model_versions v ON v.id = r.version_id "
            "ORDER BY r.id DESC LIMIT %s", (limit,)).fetchall()


def claim(conn: psycopg.Connection, run_id: int, task: str, worker: str) -> dict[str, Any]:
    """queued -> running, or RunNotClaimed saying why not."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE training_runs SET status = 'running', claims = claims + 1, worker = %s, "
            "started_at = now(), heartbeat_at = now() "
            "WHERE id = %s AND status = 'queued' AND task = %s RETURNING *",
            (worker, run_id, task)).fetchone()
        if row is not None:
            return row
        current = cur.execute("SELECT task, status, worker FROM training_runs WHERE id = %s",
                              (run_id,)).fetchone()
    if current is None:
        raise RunNotClaimed(f"training run {run_id} does not exist")
    if current["task"] != task:
        raise RunNotClaimed(f"training run {run_id} is a {current['task']} run, not {task}")
    raise RunNotClaimed(f"training run {run_id} is {current['status']}"
                        + (f" (claimed by {current['worker']})" if current["worker"] else "")
                        + "; a run is never trained twice")


def cancel(conn: psycopg.Connection, run_id: int) -> str:
    """Cancel a queued run at once; ask a running one to stop. Returns the new state."""
    row = conn.execute(
        "UPDATE training_runs SET status = CASE WHEN status = 'queued' THEN 'cancelled' "
        "ELSE status END, cancel_requested = true, "
        "finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END "
        "WHERE id = %s RETURNING status", (run_id,)).fetchone()
    if row is None:
        raise PgfleetError(f"training run {run_id} does not exist")
    return row[0]


def reap_stale(conn: psycopg.Connection, stale_after_s: float) -> list[int]:
    """Mark failed the running runs whose worker stopped heartbeating."""
    rows = conn.execute(
        "UPDATE training_runs SET status = 'failed', finished_at = now(), "
        "error = format('no heartbeat from %%s since %%s (more than %%s s): its worker died "
        "or lost the database; start the job again', worker, heartbeat_at, %s::int) "
        "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s) "
        "RETURNING id", (int(stale_after_s), stale_after_s)).fetchall()
    ids = [r[0] for r in rows]
    if ids:
        logger.error("training runs %s stopped heartbeating for over %.0f s: marked failed",
                     ids, stale_after_s)
    return ids


class Run:
    """A claimed run, from inside the job: progress, heartbeat, cancellation, outcome.

    It uses its own connection (the job's may be busy in a long statement), shared with the
    heartbeat thread under a lock.
    """

    def __init__(self, database_url: str, row: dict[str, Any], *, heartbeat_s: float = 10.0,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.id = int(row["id"])
        self.task = row["task"]
        self.arguments = row["arguments"]
        self._conn = psycopg.connect(database_url, autocommit=True,
                                     application_name=f"pgfleet-run-{self.id}")
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self._on_progress = on_progress
        self._last_write = 0.0
        self._losses: list[float] = []
        self._state: dict[str, Any] = {"step": 0, "total_steps": None, "loss": None,
                                       "phase": None}
        self._thread = threading.Thread(target=self._beat, name=f"run-{self.id}-heartbeat",
                                        daemon=True)
        self._thread.start()

    # -- inside the training loop
    def progress(self, step: int, total: int | None = None, *, loss: float | None = None,
                 phase: str | None = None, force: bool = False) -> None:
        if self._cancelled.is_set():
            raise RunCancelled(f"training run {self.id} was cancelled")
        self._state.update(step=step)
        if total is not None:
            self._state["total_steps"] = total
        if phase is not None:
            self._state["phase"] = phase
        if loss is not None:
            self._state["loss"] = float(loss)
            self._losses.append(float(loss))
        now = time.monotonic()
        if force or now - self._last_write >= 1.0:
            self._last_write = now
            self._write_progress()
            if self._on_progress is not None:
                try:
                    self._on_progress(dict(self._state, run_id=self.id))
                except Exception:  # noqa: BLE001 - progress display is a courtesy
                    logger.debug("progress callback failed", exc_info=True)

    def phase(self, name: str) -> None:
        """A new phase without steps of its own (measuring, saving): progress keeps its step."""
        self.progress(self._state["step"], phase=name, force=True)

    @property
    def losses(self) -> list[float]:
        return list(self._losses)

    def _write_progress(self) -> None:
        with self._lock:
            row = self._conn.execute(
                "UPDATE training_runs SET step = %s, total_steps = %s, loss = %s, phase = %s, "
                "losses = %s, heartbeat_at = now() WHERE id = %s RETURNING cancel_requested",
                (self._state["step"], self._state["total_steps"], self._state["loss"],
                 self._state["phase"], _thin(self._losses), self.id)).fetchone()
        if row and row[0]:
            self._cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                with self._lock:
                    row = self._conn.execute(
                        "UPDATE training_runs SET heartbeat_at = now() WHERE id = %s "
                        "RETURNING cancel_requested", (self.id,)).fetchone()
                if row and row[0]:
                    self._cancelled.set()
            except psycopg.Error as exc:
                # the run is marked failed by reap_stale if this lasts
                logger.warning("heartbeat of training run %s failed: %s", self.id, exc)

    def check_cancelled(self) -> None:
        with self._lock:
            row = self._conn.execute("SELECT cancel_requested FROM training_runs WHERE id = %s",
                                     (self.id,)).fetchone()
        if row and row[0]:
            self._cancelled.set()
            raise RunCancelled(f"training run {self.id} was cancelled")

    # -- outcome
    def finish(self, status: str, *, error: str | None = None, version_id: int | None = None,
               metrics: dict[str, Any] | None = None,
               artifacts: dict[str, Any] | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout=self._heartbeat_s + 5)
        with self._lock:
            self._conn.execute(
                "UPDATE training_runs SET status = %s, error = %s, version_id = %s, "
                "metrics = metrics || %s, artifacts = artifacts || %s, finished_at = now(), "
                "heartbeat_at = now(), step = %s, loss = %s, losses = %s, phase = %s "
                "WHERE id = %s",
                (status, error, version_id, Jsonb(metrics or {}), Jsonb(artifacts or {}),
                 self._state["step"], self._state["loss"], _thin(self._losses),
                 f"{status} (was: {self._state['phase']})" if status != "succeeded"
                 else "done", self.id))
        self._conn.close()


def _thin(values: list[float]) -> list[float]:
    if len(values) <= MAX_LOSS_POINTS:
        return values
    step = len(values) / MAX_LOSS_POINTS
    return [values[int(i * step)] for i in range(MAX_LOSS_POINTS)]


def save_loss_curve(losses: list[float], path, title: str) -> str | None:
    """A PNG of the loss per step (with a moving average), or None with nothing to plot."""
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, linewidth=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


Job = Callable[..., dict[str, Any]]


def execute(conn: psycopg.Connection, database_url: str, *, task: str, job: Job,
            options: dict[str, Any], run_id: int | None, heartbeat_s: float,
            celery_task_id: str | None = None,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Create (or find) the run, claim it, run ``job(conn, run, **options)`` with a
    heartbeat, and record the outcome. A run that is not queued any more is not run again:
    the answer says so (``skipped``)."""
    if run_id is None:
        run_id = create(conn, task, options, celery_task_id=celery_task_id)
    elif celery_task_id:
        conn.execute("UPDATE training_runs SET celery_task_id = coalesce(celery_task_id, %s) "
                     "WHERE id = %s", (celery_task_id, run_id))
    try:
        row = claim(conn, run_id, task, worker_name())
    except RunNotClaimed as exc:
        logger.warning("not starting %s: %s", task, exc)
        return {"run_id": run_id, "skipped": str(exc)}
    run = Run(database_url, row, heartbeat_s=heartbeat_s, on_progress=on_progress)
    logger.info("training run %s (%s) started: %s", run_id, task, options)
    try:
        result = job(conn, run, **options)
    except (RunCancelled, KeyboardInterrupt) as exc:
        run.finish("cancelled", error="cancelled by request" if isinstance(exc, RunCancelled)
                   else "interrupted (Ctrl-C)")
        logger.info("training run %s (%s) cancelled", run_id, task)
        return {"run_id": run_id, "status": "cancelled"}
    except BaseException as exc:
        message = str(exc) if isinstance(exc, PgfleetError) else f"{type(exc).__name__}: {exc}"
        run.finish("failed", error=message[:4000])
        logger.error("training run %s (%s) failed: %s", run_id, task, message)
        raise
    curve = (result.get("artifacts") or {}).get("loss_curve")
    if curve is None and run.losses:
        curve = save_loss_curve(run.losses, _run_dir(result) / "loss.png", f"{task} run {run_id}")
    run.finish("succeeded", version_id=result.get("version_id"),
               metrics=result.get("metrics") or {},
               artifacts={**(result.get("artifacts") or {}), "loss_curve": curve})
    logger.info("training run %s (%s) succeeded: %s", run_id, task,
                f"{result.get('name')}@{result.get('version')}")
    return {**result, "run_id": run_id, "status": "succeeded"}


def _run_dir(result: dict[str, Any]):
    from pathlib import Path

    return Path(result.get("artifact") or ".")


def optimizer_step(loss, params, optimizer, scheduler, step: int) -> float:
    """One step of a training loop: a clear error when the loss is no longer finite, else
    backward, gradients clipped at 1.0, the optimizer's and the schedule's step; the loss."""
    import torch

    if not torch.isfinite(loss):
        raise PgfleetError(f"the loss became {loss.item()} at step {step}; lower the "
                           "learning rate")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.item())
