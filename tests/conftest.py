"""Fixtures: the embedded PostgreSQL and Redis (real servers, started once per session),
and real fleet processes (producer and worker) started from the same commands
``pgfleet up`` runs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.05,
               message: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(interval_s)


@dataclass
class Services:
    home: Path
    database_url: str
    redis_url: str
    #: the login guarded SQL runs as (pgfleet_reader's rights only)
    reader_url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PGFLEET_DATABASE_URL=self.database_url,
                   PGFLEET_REDIS_URL=self.redis_url, PGFLEET_READER_URL=self.reader_url,
                   PGFLEET_HOME=str(self.home))
        env.update(extra)
        return env

    def reader_url_for(self, database_url: str) -> str:
        """The reader's login on the database of ``database_url`` (same server)."""
        return self.reader_url.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1]


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_after_each_module() -> Iterator[None]:
    """Collect garbage when a module's tests end. A socket or file left unclosed inside a
    reference cycle is otherwise found by whichever collection runs next, and its
    ResourceWarning fails an unrelated later test; collected here, it fails (at teardown)
    the last test of the module that left it."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[Services]:
    from pgfleet.ops.fleet import prepare_database, servers
    from pgfleet.settings import Settings

    home = tmp_path_factory.mktemp("pgfleet-home")
    conf = Settings(home=home)
    with servers(conf) as endpoints:
        reader_url = prepare_database(endpoints, conf)
        assert reader_url is not None
        yield Services(home, endpoints.database_url, endpoints.redis_url, reader_url)


@pytest.fixture
def conn(services):
    from pgfleet import db

    with db.connect(services.database_url, autocommit=True) as connection:
        yield connection


def reset_database(conn) -> None:
    conn.execute("TRUNCATE docs, model_cache, inference_logs, ab_history RESTART IDENTITY CASCADE")
    with conn.transaction():
        conn.execute("UPDATE model_versions SET active = (id = 1), "
                     "traffic_percent = CASE WHEN id = 1 THEN 100 ELSE 0 END")
        conn.execute("DELETE FROM model_versions WHERE id <> 1")


@pytest.fixture
def clean(conn):
    reset_database(conn)
    return conn


@pytest.fixture(scope="session")
def scratch_url(services) -> str:
    """A second migrated database that no fleet process works on: for checking triggers
    and queries without a worker consuming what they produce."""
    return create_database(services, "pgfleet_scratch")


def create_database(services: Services, name: str) -> str:
    """A new, migrated database on the test server (dropped first if it exists)."""
    from pgfleet import db
    from schema.migrate import migrate

    with db.connect(services.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = services.database_url.rsplit("/", 1)[0] + "/" + name
    with db.connect(url) as conn:
        migrate(conn)
    return url


@pytest.fixture
def scratch(scratch_url):
    from pgfleet import db

    with db.connect(scratch_url, autocommit=True) as connection:
        reset_database(connection)
        yield connection


class Proc:
    """A fleet process started as ``pgfleet up`` starts it, with its log kept on disk."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        import signal

        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")


@dataclass
class Fleet:
    services: Services
    producer: Proc
    worker: Proc


def fleet_procs(services: Services, log_dir: Path, **env: str) -> tuple[Proc, Proc]:
    from pgfleet.ops.supervisor import fleet_children

    specs = {s.name: s for s in fleet_children(flower_port=None)}
    environment = services.env(PGFLEET_BATCH_MAX_WAIT_MS="50", PGFLEET_RETRY_BASE_S="0.1",
                               PGFLEET_RETRY_MAX_S="0.5", **env)
    return (Proc("producer", specs["producer"].argv, environment, log_dir),
            Proc("worker-gpu", specs["worker-gpu"].argv, environment, log_dir))


def wait_worker_ready(services: Services, conn, timeout_s: float = 90.0) -> None:
    """Wait until the worker has loaded its model: one doc goes all the way through."""
    doc_id = conn.execute("INSERT INTO docs (content) VALUES ('fleet warm-up') RETURNING id"
                          ).fetchone()[0]
    wait_until(lambda: conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                    (doc_id,)).fetchone(), timeout_s, message="worker warm-up")
    conn.execute("DELETE FROM docs WHERE id = %s", (doc_id,))


@pytest.fixture(scope="session")
def fleet(services, tmp_path_factory) -> Iterator[Fleet]:
    from pgfleet import db

    log_dir = tmp_path_factory.mktemp("fleet-logs")
    producer, worker = fleet_procs(services, log_dir)
    worker.start()
    producer.start()
    try:
        with db.connect(services.database_url, autocommit=True) as conn:
            wait_worker_ready(services, conn)
        yield Fleet(services, producer, worker)
    finally:
        producer.stop()
        worker.stop()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        for proc in (producer, worker):
            (artifacts / f"{proc.name}.log").write_text(proc.log(), "utf-8")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgfleet.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s, input=input_text)


@dataclass
class Api:
    """A running ``pgfleet serve`` and a key it accepts."""

    url: str
    key: str
    proc: Proc

    def request(self, method: str, path: str, *, key: str | None = None, **kwargs):
        import httpx

        headers = dict(kwargs.pop("headers", {}) or {})
        given = self.key if key is None else key
        if given:
            headers["Authorization"] = f"Bearer {given}"
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def post(self, path: str, body, **kwargs):
        return self.request("POST", path, json=body, **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)


def start_api(services: Services, log_dir: Path, *, database_url: str | None = None,
              key_name: str = "tests", **env: str) -> Api:
    """``pgfleet serve`` as ``pgfleet up`` starts it, on a free port, with a new key."""
    import socket

    import httpx

    from pgfleet import db
    from pgfleet.api import keys
    from pgfleet.ops.supervisor import fleet_children

    url = database_url or services.database_url
    with db.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM api_keys WHERE name = %s", (key_name,))
        key = keys.create(conn, key_name)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = next(s for s in fleet_children(flower_port=None, api_port=port) if s.name == "api")
    environment = services.env(PGFLEET_DATABASE_URL=url, **env)
    if database_url is not None:
        environment["PGFLEET_READER_URL"] = services.reader_url_for(database_url)
    proc = Proc(f"api-{key_name}", spec.argv, environment, log_dir).start()
    api = Api(f"http://127.0.0.1:{port}", key, proc)

    def healthy():
        assert proc.process is not None and proc.process.poll() is None, proc.log()
        try:
            return httpx.get(api.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 90, interval_s=0.2, message="the API to answer /healthz")
    return api


@pytest.fixture(scope="session")
def api(services, tmp_path_factory) -> Iterator[Api]:
    log_dir = tmp_path_factory.mktemp("api-logs")
    server = start_api(services, log_dir)
    try:
        yield server
    finally:
        server.proc.stop()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "api.log").write_text(server.proc.log(), "utf-8")
