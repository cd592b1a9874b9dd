"""The handle a training job holds on its claimed run: progress, heartbeat, stopping, outcome.

* **Heartbeat.** While the job runs, a thread writes ``heartbeat_at`` every ``heartbeat_s`` and
  reads ``cancel_requested``; the run's connection is opened again (with backoff) when it is
  lost. A run whose heartbeat stops is marked failed by
  :func:`~pgfleet.training.run_record.reap_stale`.
* **Progress.** ``Run.progress`` records step, total, loss and phase (written at most once a
  second) and raises :class:`~pgfleet.training.run_record.RunCancelled` once a cancel was
  requested.
* **Stopping.** A cancel, or the run's time limit, stops the job even when it never calls
  ``progress``: the heartbeat thread raises the stop in the job's thread; a job that does
  not stop within a grace period (stuck in native code) fails its run and ends its process.
* **Outcome.** ``Run.finish`` records succeeded, failed or cancelled, only on a running run of
  this worker: a run already marked failed stays failed, with what its job did afterwards
  noted.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

import schema
from pgfleet.errors import PgfleetError
from pgfleet.training.run_record import RunCancelled, RunTimeLimit, worker_name

logger = logging.getLogger(__name__)

#: at most this many loss points are kept per run (every step, thinned when longer)
MAX_LOSS_POINTS = 2000


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
    def _connect(self) -> psycopg.Connection:
        self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5,
                                     application_name=f"pgfleet-run-{self.id}",
                                     keepalives=1, keepalives_idle=30, keepalives_interval=10,
                                     keepalives_count=3)
        return self._conn

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
                conn = self._conn
                if conn is None or conn.closed or \
                        conn.info.transaction_status != TransactionStatus.IDLE:
                    # closed, broken, or left mid-statement by an exception in the job
                    self._drop_connection()
                    if not reconnect:
                        return None
                    fresh = True
                    conn = self._connect()
                    logger.info("training run %s: connected to the database again", self.id)
                return conn.execute(schema.query(name), params).fetchall()
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
        # stopped and _stopped_at are set together, by this thread (in _stop_job)
        stopped = self.stopped
        if stopped is None or self._stopped_at is None or \
                now < self._stopped_at + self._stop_grace_s:
            return False
        with self._job_lock:
            if self._job_thread is None:
                return False
        why = (f"{stopped[1]}, and the job did not stop within "
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
