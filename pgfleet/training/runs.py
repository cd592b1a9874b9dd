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
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import schema
from pgfleet.errors import PgfleetError

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
#: at most this many loss points are kept per run (every step, thinned when longer)
MAX_LOSS_POINTS = 2000


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
    """A claimed run, from inside the job: progress, heartbeat, cancellation, time limit,
    outcome.

    It uses its own connection (the job's may be busy in a long statement), shared with the
    heartbeat thread under a lock. A lost connection (PostgreSQL restarted, the backend
    terminated) is opened again by the heartbeat thread, with backoff; progress is not
    written meanwhile, and ``finish`` keeps trying for ``reconnect_patience_s``.

    The heartbeat thread also stops the job: once a cancel is requested or the time limit
    passes, it raises :class:`RunCancelled` or :class:`RunTimeLimit` in the job's thread
    (``PyThreadState_SetAsyncExc``: the job need not call ``progress``). A job that does not
    stop within ``stop_grace_s`` is stuck outside Python (in native code, a blocking call):
    the run is marked failed and ``on_stuck`` ends the process (a Celery worker replaces its
    pool process).
    """

    def __init__(self, database_url: str, row: dict[str, Any], *, heartbeat_s: float = 10.0,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 time_limit_s: float | None = None, stop_grace_s: float = 60.0,
                 on_stuck: Callable[[str], None] | None = None,
                 reconnect_patience_s: float = 120.0):
        self.id = int(row["id"])
        self.task = row["task"]
        self.arguments = row["arguments"]
        self.worker = row.get("worker") or worker_name()
        self.time_limit_s = time_limit_s if time_limit_s and time_limit_s > 0 else None
        self._url = database_url
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self._stop_grace_s = stop_grace_s
        self._reconnect_patience_s = reconnect_patience_s
        self._on_progress = on_progress
        self._on_stuck = on_stuck or end_process
        self._last_write = 0.0
        self._losses: list[float] = []
        self._state: dict[str, Any] = {"step": 0, "total_steps": None, "loss": None,
                                       "phase": None}
        self._started = time.monotonic()
        self._deadline = (self._started + self.time_limit_s) if self.time_limit_s else None
        # the job's thread while it runs in call(), and why and when it was told to stop
        self._job_lock = threading.Lock()
        self._job_thread: int | None = None
        self.stopped: tuple[type[BaseException], str] | None = None
        self._stopped_at: float | None = None
        self._finished: str | None = None
        self._connect()
        self._thread = threading.Thread(target=self._beat, name=f"run-{self.id}-heartbeat",
                                        daemon=True)
        self._thread.start()

    # -- the run's connection
    def _connect(self) -> None:
        self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                                     application_name=f"pgfleet-run-{self.id}",
                                     keepalives=1, keepalives_idle=30, keepalives_interval=10,
                                     keepalives_count=3)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def _query(self, name: str, params: dict[str, Any], *, reconnect: bool,
               patience_s: float = 0.0) -> list[tuple] | None:
        """Run one named statement on the run's connection (the caller holds the lock).
        A lost connection is opened again when ``reconnect``: at once when the old one
        turns out dead, then with backoff for up to ``patience_s``. None when the statement
        could not run."""
        deadline = time.monotonic() + patience_s
        pause, retried = 0.2, False
        params = {**params, "run_id": self.id, "worker": self.worker}
        while True:
            fresh = False
            try:
                if self._conn is None or self._conn.closed or \
                        self._conn.info.transaction_status != TransactionStatus.IDLE:
                    # closed, broken, or left mid-statement by an exception in the job
                    self._drop_connection()
                    if not reconnect:
                        return None
                    fresh = True
                    self._connect()
                    logger.info("training run %s: connected to the database again", self.id)
                return self._conn.execute(schema.query(name), params).fetchall()
            except psycopg.OperationalError as exc:
                self._drop_connection()
                if reconnect and not fresh and not retried:
                    retried = True  # the old connection was dead: a new one may work now
                    continue
                if not reconnect or time.monotonic() + pause > deadline:
                    text = str(exc).strip()
                    logger.warning("training run %s: %s failed: %s", self.id, name,
                                   text.splitlines()[0] if text else type(exc).__name__)
                    return None
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    # -- inside the training loop
    def progress(self, step: int, total: int | None = None, *, loss: float | None = None,
                 phase: str | None = None, force: bool = False) -> None:
        self._raise_if_stopped()
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
            if self._write_progress():
                self._last_write = now
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

    def _write_progress(self) -> bool:
        # never wait long behind the heartbeat thread (it may be reconnecting): the next
        # step writes the progress instead
        if not self._lock.acquire(timeout=1.0):
            return False
        try:
            rows = self._query("training_run_progress", {
                "step": self._state["step"], "total_steps": self._state["total_steps"],
                "loss": self._state["loss"], "phase": self._state["phase"],
                "losses": _thin(self._losses)}, reconnect=False)
        finally:
            self._lock.release()
        if rows and rows[0][0]:
            self._cancelled.set()
        return rows is not None

    def check_cancelled(self) -> None:
        with self._lock:
            rows = self._query("training_run_cancel_requested", {}, reconnect=False)
        if rows and rows[0][0]:
            self._cancelled.set()
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped[0](self.stopped[1])
        if self._cancelled.is_set():
            raise RunCancelled(f"training run {self.id} was cancelled")

    def call(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the job in this thread, where the heartbeat thread can stop it."""
        with self._job_lock:
            self._job_thread = threading.get_ident()
        try:
            return job(*args, **kwargs)
        finally:
            with self._job_lock:
                if self.stopped is not None:
                    # a stop raised too late to interrupt the job must not fire after it
                    _async_raise(self._job_thread, None)
                self._job_thread = None

    # -- the heartbeat thread
    def _beat(self) -> None:
        failures = 0
        while not self._stop.wait(self._until_next(
                min(self._heartbeat_s, 0.5 * 2 ** (failures - 1)) if failures
                else self._heartbeat_s)):
            try:
                with self._lock:
                    rows = self._query("training_run_heartbeat", {}, reconnect=True)
            except psycopg.Error as exc:  # not a lost connection: say so, and go on beating
                logger.warning("heartbeat of training run %s failed: %s", self.id, exc)
                rows = None
            if rows is None:
                # tried again sooner, with backoff; the producer marks the run failed if
                # this lasts past PGFLEET_TRAINING_STALE_S
                failures += 1
            else:
                failures = 0
                if rows:
                    self._observe(*rows[0])
            if self._enforce():
                return

    def _until_next(self, pause: float) -> float:
        wake = time.monotonic() + pause
        if self._deadline is not None and self.stopped is None:
            wake = min(wake, self._deadline)
        if self._stopped_at is not None:
            wake = min(wake, self._stopped_at + self._stop_grace_s)
        return max(0.01, wake - time.monotonic())

    def _observe(self, status: str, cancel_requested: bool, beating: bool) -> None:
        if cancel_requested:
            self._cancelled.set()
        if not beating and self._finished is None:
            self._finished = status
            logger.warning("training run %s is %s while its job still runs (the producer "
                           "lost its heartbeat); its outcome will be noted, not recorded",
                           self.id, status)

    def _enforce(self) -> bool:
        """Stop the job when it must stop; True once the run was given up as stuck."""
        now = time.monotonic()
        if self._cancelled.is_set():
            self._stop_job(RunCancelled, f"training run {self.id} was cancelled")
        elif self._deadline is not None and now >= self._deadline:
            self._stop_job(RunTimeLimit, f"training run {self.id} ran past its time limit of "
                                         f"{_seconds(self.time_limit_s)} s")
        if self._stopped_at is None or now < self._stopped_at + self._stop_grace_s:
            return False
        with self._job_lock:
            if self._job_thread is None:
                return False
        why = (f"{self.stopped[1]}, and the job did not stop within "
               f"{_seconds(self._stop_grace_s)} s (stuck outside Python: native code or a "
               "blocking call); its process is ended")
        logger.critical("%s", why)
        try:
            self._record("failed", error=why)
        except (PgfleetError, psycopg.Error) as exc:
            # the producer marks it failed once the heartbeat stops with the process
            logger.error("training run %s: could not record that it is stuck: %s", self.id, exc)
        self._on_stuck(why)
        return True

    def _stop_job(self, kind: type[BaseException], why: str) -> None:
        with self._job_lock:
            if self.stopped is not None or self._job_thread is None:
                return
            self.stopped = (kind, why)
            self._stopped_at = time.monotonic()
            logger.warning("%s: stopping its job", why)
            _async_raise(self._job_thread, kind)

    # -- outcome
    def finish(self, status: str, *, error: str | None = None, version_id: int | None = None,
               metrics: dict[str, Any] | None = None,
               artifacts: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None) -> str:
        """Record the outcome; returns the run's status afterwards. Only a running run of
        this worker changes; on one already ended (marked failed because its heartbeat was
        lost, say) the outcome is noted beside its status, which stays."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._heartbeat_s + 5)
        try:
            return self._record(status, error=error, version_id=version_id, metrics=metrics,
                                artifacts=artifacts, result=result)
        finally:
            with self._lock:
                self._drop_connection()

    def _record(self, status: str, *, error: str | None = None, version_id: int | None = None,
                metrics: dict[str, Any] | None = None,
                artifacts: dict[str, Any] | None = None,
                result: dict[str, Any] | None = None) -> str:
        params = {"status": status, "error": error, "version_id": version_id,
                  "metrics": Jsonb(metrics or {}), "artifacts": Jsonb(artifacts or {}),
                  "step": self._state["step"], "loss": self._state["loss"],
                  "losses": _thin(self._losses),
                  "phase": f"{status} (was: {self._state['phase']})" if status != "succeeded"
                  else "done"}
        with self._lock:
            if self._rows("training_run_finish", params):
                return status
            [(current, worker, current_error, _, _)] = self._rows("training_run_state", {})
            if worker == self.worker and current == status and \
                    (status == "succeeded" or current_error == error):
                return status  # this very update, whose answer the lost connection ate
            if current in ("queued", "running"):
                logger.error("training run %s is %s under worker %s, not %s: its outcome "
                             "(%s) is not recorded", self.id, current, worker, self.worker,
                             status)
                return current
            late = {"status": status, "error": error, "version_id": version_id,
                    "metrics": metrics or {}, "worker": self.worker,
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            produced = ""
            if result and version_id is not None:
                produced = f": it registered {result.get('name')}@{result.get('version')} " \
                           f"(version id {version_id}), left inactive"
            note = (f"the job went on after the run was marked {current} and ended {status} "
                    f"at {late['at']}{produced}")
            self._rows("training_run_late_outcome", {
                "note": note, "version_id": version_id, "late": Jsonb(late),
                "artifacts": Jsonb(artifacts or {})})
        logger.error("training run %s was already %s when its job ended %s; noted, and it "
                     "stays %s", self.id, current, status, current)
        return current

    def _rows(self, name: str, params: dict[str, Any]) -> list[tuple]:
        rows = self._query(name, params, reconnect=True,
                           patience_s=self._reconnect_patience_s)
        if rows is None:
            raise PgfleetError(f"training run {self.id}: the database stayed unreachable for "
                               f"{self._reconnect_patience_s:.0f} s; the outcome ({name}) was "
                               "not recorded, and the producer will mark the run failed")
        return rows


def _async_raise(thread_id: int | None, kind: type[BaseException] | None) -> None:
    """Raise ``kind`` in the thread at its next Python instruction (None: cancel that)."""
    if thread_id is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(kind) if kind is not None else None)


def _seconds(value: float | None) -> str:
    return f"{value:g}"


#: the exit status of a process ended because its training job was stuck
EXIT_STUCK = 70


def end_process(why: str) -> None:
    """End this process at once: its training job is stuck where nothing else can stop it.
    In a Celery pool process the worker sees the process exit and starts another."""
    logger.critical("ending process %s: %s", os.getpid(), why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_STUCK)


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
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            time_limit_s: float | None = None, stop_grace_s: float = 60.0,
            on_stuck: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Create (or find) the run, claim it, run ``job(conn, run, **options)`` with a
    heartbeat and a time limit, and record the outcome. A run that is not queued any more is
    not run again: the answer says so (``skipped``)."""
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
