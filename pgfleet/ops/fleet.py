"""``pgfleet up``: the embedded servers (when no URLs are set), migrate, the fleet's
processes under supervision, and a clean stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import schema
from pgfleet import db
from pgfleet.errors import BrokerUnavailable, ConfigurationError, DatabaseUnavailable
from pgfleet.ops.credentials import Credentials
from pgfleet.ops.credentials import load_or_create as load_credentials
from pgfleet.ops.credentials import path_for as credentials_path
from pgfleet.ops.services import EmbeddedPostgres, EmbeddedRedis, free_port
from pgfleet.ops.supervisor import ChildSpec, Supervisor, fleet_children
from pgfleet.settings import Settings
from pgfleet.state import STATE_FILE, read_state, write_state
from producers import broker
from schema.migrate import migrate

logger = logging.getLogger(__name__)


@dataclass
class Endpoints:
    """The servers a fleet uses, and the embedded ones this process started."""

    database_url: str
    redis_url: str
    #: the embedded servers started here (to supervise); empty for configured URLs
    embedded: list = field(default_factory=list)
    #: the password to give the reader login on the embedded PostgreSQL (None: not ours)
    reader_password: str | None = None
    #: the password of the restricted login the embedded default runs most children as
    fleet_password: str | None = None


@contextlib.contextmanager
def servers(conf: Settings, credentials: Credentials | None = None) -> Iterator[Endpoints]:
    """The database and broker URLs: configured ones, or embedded servers started here with
    the home's credentials (generated at the first start) and stopped on the way out."""
    started: list[Callable[[], None]] = []
    try:
        endpoints = Endpoints(conf.database_url or "", conf.redis_url or "")
        if not (conf.database_url and conf.redis_url) and credentials is None:
            credentials = load_credentials(conf.home)
        if not conf.database_url:
            assert credentials is not None
            pg = EmbeddedPostgres(conf.home, conf.pg_port, password=credentials.postgres_password)
            endpoints.database_url = pg.start()
            started.append(pg.stop)
            endpoints.embedded.append(pg)
            endpoints.reader_password = credentials.reader_password
            endpoints.fleet_password = credentials.fleet_password
        if not conf.redis_url:
            assert credentials is not None
            redis = EmbeddedRedis(conf.home, conf.redis_port,
                                  password=credentials.redis_password)
            endpoints.redis_url = redis.start()
            started.append(redis.stop)
            endpoints.embedded.append(redis)
        yield endpoints
    finally:
        for stop in reversed(started):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stop the others anyway
                logger.exception("stopping an embedded server failed")


def prepare_database(endpoints: Endpoints, conf: Settings) -> str | None:
    """Migrate, and return the reader login's URL: on the embedded PostgreSQL the login is
    given its password here; elsewhere it is ``PGFLEET_READER_URL`` (None when unset)."""
    migrate_url(endpoints.database_url)
    if endpoints.reader_password is not None:
        return enable_reader_login(endpoints.database_url, endpoints.reader_password)
    if not conf.reader_url:
        logger.warning("PGFLEET_READER_URL is not set: text-to-SQL cannot run queries until it "
                       "names a login with only pgfleet_reader's rights (see docs/reliability.md"
                       ", Security)")
    return conf.reader_url


def migrate_url(url: str, wait_s: float = 30.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with db.connect(url, register=False) as conn:
                result = migrate(conn)
            break
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    if result.applied:
        logger.info("applied migrations: %s", ", ".join(result.applied))


READER_ROLE = "pgfleet_reader"


#: the login the embedded default runs its producer and embedding workers as: a member of
#: pgfleet_worker, which reads docs and writes only the fleet's own tables
FLEET_LOGIN = "pgfleet_fleet"
WORKER_ROLE = "pgfleet_worker"
#: the children that need no more than pgfleet_worker's rights (the training worker
#: registers versions and builds their indexes: it stays the owner, like the commands)
RESTRICTED_CHILDREN = ("producer", "worker-gpu", "worker-cpu", "beat", "flower", "metrics",
                       "api")
#: the name of the key the command line asks the fleet's API with (see credentials)
LOCAL_API_KEY = "pgfleet-local"


def enable_reader_login(admin_url: str, password: str) -> str:
    """Let ``pgfleet_reader`` log in with ``password`` (SCRAM; only its hash is sent) and
    return the URL of that login: the session that guarded SQL runs in, whose session user
    has nothing but the reader's rights. Run after migrating (which creates the role)."""
    return _enable_login(admin_url, READER_ROLE, password)


def enable_fleet_login(admin_url: str, password: str) -> str:
    """Create (or update) the login ``pgfleet_fleet``, a member of ``pgfleet_worker`` with
    nothing else, and return its URL."""
    return _enable_login(admin_url, FLEET_LOGIN, password, member_of=WORKER_ROLE)


def _enable_login(admin_url: str, role: str, password: str, *,
                  member_of: str | None = None) -> str:
    from urllib.parse import quote, urlsplit, urlunsplit

    from psycopg import sql

    with db.connect(admin_url, autocommit=True, register=False) as conn, conn.transaction():
        if member_of is not None:
            exists = conn.execute(schema.query("role_exists"), (role,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL(schema.query("create_member_role")).format(
                    role=sql.Identifier(role), member_of=sql.Identifier(member_of)))
        secret = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                              b"scram-sha-256").decode()
        conn.execute(sql.SQL(schema.query("enable_role_login")).format(
            role=sql.Identifier(role), secret=sql.Literal(secret)))
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:{quote(password, safe='')}@{host}"))


def check_redis(url: str, timeout_s: float = 5.0) -> None:
    """Fail early, in one line, when the broker cannot be reached."""
    import redis

    client = broker.connect(url, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot connect to Redis at {_redacted(url)}: {exc}") from exc
    finally:
        client.close()


def _port(port: int, what: str) -> int:
    """``port``, or a free one when it is 0 or already taken (said in the log)."""
    if port == 0:
        return free_port()
    import socket

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            new = free_port()
            logger.warning("port %s is in use; %s will listen on %s", port, what, new)
            return new
    return port


def up(conf: Settings, *, flower: bool = True, metrics: bool = True, api: bool = True,
       on_ready: Callable[[Supervisor], Callable[[], None] | None] | None = None,
       announce: Callable[[str], None] = print, show_secrets: bool = False) -> int:
    """Run the fleet until a signal arrives. Returns the exit code. ``announce`` says where
    things are; a secret is in what it says only with ``show_secrets`` (a terminal, never a
    file a log may end up in)."""
    conf.home.mkdir(parents=True, exist_ok=True)
    conf.home.chmod(0o700)
    state = read_state(conf.home)
    if state is not None:
        raise ConfigurationError(
            f"a fleet is already running under {conf.home.resolve()} (pid {state['pid']}); "
            "stop it first, or use another PGFLEET_HOME")
    _stop_orphans(conf.home / STATE_FILE)
    stop_event = threading.Event()
    supervisor: Supervisor | None = None

    def on_signal(signum, _frame):
        logger.info("received %s: stopping the fleet", signal.Signals(signum).name)
        stop_event.set()
        if supervisor is not None:
            supervisor.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    state_path = conf.home / STATE_FILE
    credentials = load_credentials(conf.home)
    try:
        with servers(conf, credentials) as endpoints:
            if stop_event.is_set():
                return 0
            database_url, redis_url = endpoints.database_url, endpoints.redis_url
            check_redis(redis_url)
            reader_url = prepare_database(endpoints, conf)
            flower_port = _port(conf.flower_port, "Flower") if flower else None
            metrics_port = _port(conf.metrics_port, "the metrics endpoint") if metrics else None
            api_port = _api_port(conf, database_url, credentials) if api else None
            env = _children_env(conf, endpoints, reader_url)
            if flower:
                _announce_flower(env, flower_port, credentials, conf, announce, show_secrets)
            specs = fleet_children(flower_port=flower_port, metrics_port=metrics_port,
                                   api_port=api_port)
            _restrict(specs, endpoints)
            supervisor = Supervisor(specs, env=env, log_dir=conf.home / "logs",
                                    shutdown_timeout_s=conf.shutdown_timeout_s)
            for server in endpoints.embedded:
                supervisor.adopt(ChildSpec(server.name, [], launch=server.restart),
                                 server.process, server.log)
            write_state(state_path, {
                "pid": os.getpid(), "database_url": database_url, "redis_url": redis_url,
                "reader_url": reader_url, "flower_port": flower_port,
                "metrics_port": metrics_port, "api_port": api_port,
                "api_url": _api_url(conf, api_port), "embedded": not conf.database_url,
                "started_at": time.time()})
            try:
                if stop_event.is_set():
                    return 0
                supervisor.start_all()
                base_state = json.loads(state_path.read_text("utf-8"))
                known_pids: dict[str, int] = {}
                extra_tick = on_ready(supervisor) if on_ready else None

                def tick() -> None:
                    # keep the children's pids current (restarts change them) so that a
                    # later start can stop orphans of a killed `pgfleet up`
                    pids = supervisor.pids()
                    if pids != known_pids:
                        known_pids.clear()
                        known_pids.update(pids)
                        write_state(state_path, {**base_state, "children": pids})
                    if extra_tick is not None:
                        extra_tick()

                logger.info("fleet is up: database %s, broker %s%s%s%s",
                            _redacted(database_url),
                            _redacted(redis_url),
                            f", Flower http://127.0.0.1:{flower_port}" if flower_port else "",
                            f", metrics http://127.0.0.1:{metrics_port}/metrics"
                            if metrics_port else "",
                            f", API {_api_url(conf, api_port)}" if api_port else "")
                supervisor.run(on_tick=tick)
            finally:
                supervisor.shutdown()
                state_path.unlink(missing_ok=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("fleet stopped")
    return 0


def _api_port(conf: Settings, database_url: str, credentials: Credentials) -> int:
    install_local_key(database_url, credentials)
    return _port(conf.api_port, "the HTTP API")


def install_local_key(database_url: str, credentials: Credentials) -> None:
    """The key in the home's credentials file is the one the fleet's API accepts from this
    machine's command line (stored as its hash, like every key)."""
    from pgfleet.api import keys

    with db.connect(database_url, autocommit=True, register=False) as conn:
        keys.install(conn, LOCAL_API_KEY, credentials.api_key)


def _api_url(conf: Settings, port: int | None) -> str | None:
    if port is None:
        return None
    host = "127.0.0.1" if conf.api_address in ("0.0.0.0", "::", "") else conf.api_address
    return f"http://{host}:{port}"


def _restrict(specs: list[ChildSpec], endpoints: Endpoints) -> None:
    """On the embedded PostgreSQL, the children that need no more run as the restricted
    login (a member of pgfleet_worker) instead of the superuser."""
    if endpoints.fleet_password is None:
        return
    url = enable_fleet_login(endpoints.database_url, endpoints.fleet_password)
    for spec in specs:
        if spec.name in RESTRICTED_CHILDREN:
            spec.env = {"PGFLEET_DATABASE_URL": url}


def _children_env(conf: Settings, endpoints: Endpoints, reader_url: str | None,
                  ) -> dict[str, str]:
    env = dict(os.environ, PGFLEET_DATABASE_URL=endpoints.database_url,
               PGFLEET_REDIS_URL=endpoints.redis_url, PGFLEET_HOME=str(conf.home.resolve()),
               TOKENIZERS_PARALLELISM="false")
    if reader_url:
        env["PGFLEET_READER_URL"] = reader_url
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _announce_flower(env: dict[str, str], port: int | None, credentials: Credentials,
                     conf: Settings, announce: Callable[[str], None], show_secrets: bool) -> None:
    """Flower always runs behind basic auth: a password chosen with
    PGFLEET_FLOWER_PASSWORD, else the home's generated one. The generated one is shown on a
    terminal only; elsewhere the message says which file holds it."""
    user = env.get("PGFLEET_FLOWER_USER") or "admin"
    if env.get("PGFLEET_FLOWER_PASSWORD"):
        announce(f"Flower: http://127.0.0.1:{port}  user {user}  (password: "
                 "PGFLEET_FLOWER_PASSWORD)")
        return
    env["PGFLEET_FLOWER_PASSWORD"] = credentials.flower_password
    where = credentials_path(conf.home.resolve())
    if show_secrets:
        announce(f"Flower: http://127.0.0.1:{port}  user {user}  password "
                 f"{credentials.flower_password}  (generated, kept in {where}; set "
                 "PGFLEET_FLOWER_PASSWORD to choose one)")
    else:
        announce(f"Flower: http://127.0.0.1:{port}  user {user}  password: "
                 f"\"flower_password\" in {where} (not printed: this output is not a "
                 "terminal)")


def _redacted(url: str) -> str:
    from pgfleet.settings import redact

    return redact(url)


def _stop_orphans(state_path: Path) -> None:
    """A previous ``pgfleet up`` that was SIGKILLed leaves its children running (they are
    in sessions of their own): stop those named in its state file."""
    import psutil

    try:
        old = json.loads(state_path.read_text("utf-8"))
    except (OSError, ValueError):
        return
    for name, pid in (old.get("children") or {}).items():
        try:
            proc = psutil.Process(int(pid))
            cmdline = " ".join(proc.cmdline())
        except (psutil.Error, ValueError, TypeError):
            continue
        if "producers" in cmdline or "celery" in cmdline or "pgfleet.cli" in cmdline:
            logger.warning("stopping %s (pid %s) left running by a previous pgfleet up", name, pid)
            for child in [proc, *proc.children(recursive=True)]:
                try:
                    child.kill()
                except psutil.Error:
                    pass
    state_path.unlink(missing_ok=True)
