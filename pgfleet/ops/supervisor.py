"""Run the fleet's processes as children: restart one that dies (with backoff, logged), and
stop them all, cleanly, on one Ctrl-C or SIGTERM.

The embedded servers are children too (:meth:`Supervisor.adopt`): started before the others
(migrations need them), restarted the same way when they die, with their own start
function (same data directory, port and password), and stopped last, by whoever started
them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from workers.queues import QUEUE_CPU, QUEUE_GPU, QUEUE_TRAINING

logger = logging.getLogger(__name__)

#: a child that ran this long before dying is restarted without waiting
HEALTHY_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    #: a server's own start function, returning its new process (it waits until the server
    #: is ready); None: the supervisor runs ``argv``
    launch: Callable[[], subprocess.Popen] | None = None
    #: variables this child gets on top of the fleet's environment
    env: dict[str, str] | None = None

    @property
    def server(self) -> bool:
        return self.launch is not None


@dataclass
class Child:
    spec: ChildSpec
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff_s: float = 1.0
    history: list[int] = field(default_factory=list)


def fleet_children(*, flower_port: int | None, metrics_port: int | None = None,
                   worker_concurrency: int = 1, beat: bool = True,
                   api_port: int | None = None) -> list[ChildSpec]:
    """The processes of one fleet: a producer, one worker per queue, Celery beat (the
    schedule of maintenance tasks; exactly one per fleet), Flower, the Prometheus
    endpoint and the HTTP API."""
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "workers"]
    specs = [ChildSpec("producer", [python, "-m", "producers"])]
    for short, queue, pool in (("gpu", QUEUE_GPU, "prefork"), ("cpu", QUEUE_CPU, "prefork"),
                               ("training", QUEUE_TRAINING, "prefork")):
        # a training worker takes a job only when it has a free process: the others stay in
        # the queue for other training workers, instead of waiting reserved behind a long
        # run (where Redis' visibility timeout would hand them out again)
        prefetch = (["--prefetch-multiplier", "1", "--disable-prefetch"]
                    if queue == QUEUE_TRAINING else [])
        specs.append(ChildSpec(f"worker-{short}", [
            *celery, "worker", "-Q", queue, "-n", f"{short}@%h", "-P", pool,
            "-c", str(worker_concurrency), *prefetch, "--loglevel", "INFO", "-E",
            "--without-gossip", "--without-mingle"]))
    if beat:
        specs.append(ChildSpec("beat", [python, "-m", "pgfleet.cli", "beat"]))
    if flower_port is not None:
        specs.append(ChildSpec("flower", [python, "-m", "pgfleet.cli", "flower",
                                          f"--port={flower_port}"]))
    if metrics_port is not None:
        specs.append(ChildSpec("metrics", [python, "-m", "pgfleet.cli", "metrics",
                                           f"--port={metrics_port}"]))
    if api_port is not None:
        specs.append(ChildSpec("api", [python, "-m", "pgfleet.cli", "serve",
                                       f"--port={api_port}"]))
    return specs


class Supervisor:
    def __init__(self, specs: list[ChildSpec], *, env: dict[str, str], log_dir: Path,
                 shutdown_timeout_s: float = 30.0, cwd: Path | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children = [Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self.env = env
        self.cwd = cwd
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stopping = threading.Event()

    def adopt(self, spec: ChildSpec, process: subprocess.Popen, log_path: Path) -> None:
        """Supervise a server that is already running (started before the others); when it
        dies it is started again with ``spec.launch``."""
        if spec.launch is None:
            raise ValueError(f"{spec.name}: a server needs a launch function")
        self.children.insert(0, Child(spec, log_path, process=process,
                                      started_at=time.monotonic()))

    def start_all(self) -> None:
        for child in self.children:
            if child.process is None:
                self._start(child)

    def _start(self, child: Child) -> bool:
        if child.spec.launch is not None:
            try:
                child.process = child.spec.launch()
            except Exception as exc:  # noqa: BLE001 - tried again after a backoff
                logger.error("could not start %s again: %s (see %s)", child.spec.name, exc,
                             child.log_path)
                return False
            child.started_at = time.monotonic()
            logger.warning("started %s again (pid %s)", child.spec.name, child.process.pid)
            return True
        log = open(child.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            child.process = subprocess.Popen(
                child.spec.argv, env={**self.env, **(child.spec.env or {})}, cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        child.started_at = time.monotonic()
        logger.info("started %s (pid %s), log %s", child.spec.name, child.process.pid,
                    child.log_path)
        return True

    def poll(self) -> None:
        """Restart children that died, with backoff."""
        now = time.monotonic()
        for child in self.children:
            proc = child.process
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                ran = now - child.started_at
                child.backoff_s = 1.0 if ran >= HEALTHY_AFTER_S else min(
                    MAX_BACKOFF_S, child.backoff_s * 2)
                child.next_start = now + (0 if ran >= HEALTHY_AFTER_S else child.backoff_s)
                child.process = None
                child.history.append(code)
                _kill_group(proc.pid)  # a dead celery main can leave pool children behind
                logger.error("%s exited with code %s after %.1f s; restarting in %.0f s (see %s)",
                             child.spec.name, code, ran, child.next_start - now, child.log_path)
            if child.process is None and now >= child.next_start and not self.stopping.is_set():
                child.restarts += 1
                if not self._start(child):
                    child.backoff_s = min(MAX_BACKOFF_S, child.backoff_s * 2)
                    child.next_start = time.monotonic() + child.backoff_s

    def run(self, *, on_tick: Callable[[], None] | None = None, tick_s: float = 0.5) -> None:
        """Supervise until :meth:`stop` is called (by a signal handler, say)."""
        while not self.stopping.is_set():
            self.poll()
            if on_tick is not None:
                on_tick()
            self.stopping.wait(tick_s)

    def stop(self) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        """SIGTERM every child (Celery's warm shutdown), wait, then kill what is left. The
        servers are left running: they stop last, stopped by whoever started them."""
        self.stopping.set()
        running = [c for c in self.children if c.process is not None
                   and c.process.poll() is None and not c.spec.server]
        for child in running:
            try:
                os.killpg(child.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.shutdown_timeout_s
        for child in running:
            proc = child.process
            assert proc is not None
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("%s did not stop within %.0f s; killing it", child.spec.name,
                             self.shutdown_timeout_s)
            _kill_group(proc.pid)
            logger.info("stopped %s", child.spec.name)

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.process.pid for c in self.children if c.process is not None}


def _kill_group(pid: int) -> None:
    """SIGKILL whatever is left of a child's process group (e.g. orphaned pool processes)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    # reap descendants that escaped the group
    try:
        for proc in psutil.Process(pid).children(recursive=True):
            proc.kill()
    except psutil.Error:
        pass
