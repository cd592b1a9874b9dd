"""A fleet to damage: its own embedded PostgreSQL and password-protected Redis, the producer
and a worker running as the restricted ``pgfleet_worker`` role under the same supervisor
``pgfleet up`` uses, a load generator, and the end-state check.

Every fault test damages two kinds of work at once: ``docs`` and a user's table ``notes``
added as a source (chunked in windows of 16 tokens, so that rows have one to three chunks
and a change replaces some of them). The load writes both; the check verifies both."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, wait_until

WORKER_PASSWORD = "w0rker-s3cret"
REDIS_PASSWORD = "r3dis-s3cret"

FLEET_ENV = {
    "PGFLEET_REQUEUE_AFTER_S": "5",
    "PGFLEET_RETRY_BASE_S": "0.2",
    "PGFLEET_RETRY_MAX_S": "2",
    "PGFLEET_BATCH_MAX_DOCS": "16",
    "PGFLEET_POLL_INTERVAL_S": "0.5",
    "PGFLEET_SHUTDOWN_TIMEOUT_S": "20",
    "PGFLEET_BATCH_MAX_WAIT_MS": "50",
}

WORDS = ("database vector index query worker queue model batch cache crash restart "
         "postgres redis embedding search latency throughput shard replica commit").split()


class ChaosFleet:
    def __init__(self, home: Path):
        from pgfleet.ops.services import EmbeddedPostgres, EmbeddedRedis

        self.home = home
        self.pg = EmbeddedPostgres(home)
        self.redis = EmbeddedRedis(home, password=REDIS_PASSWORD)
        self.supervisor = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()

    def start_servers(self) -> None:
        from pgfleet import db
        from schema.migrate import migrate

        self.admin_url = self.pg.start()
        self.redis.start()
        with db.connect(self.admin_url, autocommit=True) as conn:
            migrate(conn)
            add_notes_source(conn)
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'fleet_login'").fetchone():
                conn.execute(f"CREATE ROLE fleet_login LOGIN PASSWORD '{WORKER_PASSWORD}' "
                             "IN ROLE pgfleet_worker")
        host = self.admin_url.rsplit("@", 1)[1]
        self.worker_url = f"postgresql://fleet_login:{WORKER_PASSWORD}@{host}"

    def env(self) -> dict[str, str]:
        return dict(os.environ, PGFLEET_DATABASE_URL=self.worker_url,
                    PGFLEET_REDIS_URL=self.redis.url, PGFLEET_HOME=str(self.home), **FLEET_ENV)

    def start_fleet(self) -> None:
        from pgfleet.ops.supervisor import Supervisor, fleet_children

        specs = [s for s in fleet_children(flower_port=None) if s.name in ("producer", "worker-gpu")]
        self.supervisor = Supervisor(specs, env=self.env(), log_dir=self.home / "logs",
                                     shutdown_timeout_s=float(FLEET_ENV["PGFLEET_SHUTDOWN_TIMEOUT_S"]),
                                     cwd=ROOT)
        self.supervisor.start_all()
        self._stop_polling.clear()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop_polling.wait(0.2):
            self.supervisor.poll()

    def stop_fleet(self) -> float:
        """SIGTERM the fleet's processes; returns how long the graceful stop took."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(5)
        started = time.monotonic()
        self.supervisor.shutdown()
        return time.monotonic() - started

    def process(self, name: str) -> psutil.Process:
        child = next(c for c in self.supervisor.children if c.spec.name == name)
        assert child.process is not None, f"{name} is not running"
        return psutil.Process(child.process.pid)

    def pool_process(self, other_than: int | None = None, timeout_s: float = 30.0,
                     ) -> psutil.Process:
        """The worker's live pool process (a pool process just killed stays listed as a
        child until the worker reaps it: it is not the one to kill or wait for)."""
        def live():
            for child in self.process("worker-gpu").children():
                try:
                    if child.pid != other_than and child.status() != psutil.STATUS_ZOMBIE:
                        return child
                except psutil.NoSuchProcess:
                    continue
            return None

        return wait_until(live, timeout_s, message="a live pool process")

    def connect(self):
        from pgfleet import db

        return db.connect(self.admin_url, autocommit=True)

    def logs(self) -> str:
        return "\n".join(p.read_text("utf-8", errors="replace")
                         for p in (self.home / "logs").glob("*.log"))


def add_notes_source(conn) -> None:
    """The user's table the fault tests damage alongside docs, as a source."""
    from pgfleet.sources import catalog

    conn.execute("CREATE TABLE IF NOT EXISTS notes (id bigint GENERATED BY DEFAULT AS "
                 "IDENTITY PRIMARY KEY, title text NOT NULL DEFAULT '', body text NOT NULL, "
                 "stars integer NOT NULL DEFAULT 0)")
    if not any(s.name == "notes" for s in catalog.list_sources(conn)):
        catalog.add(conn, catalog.SourceSpec(name="notes", table="notes",
                                             columns=["title", "body"], chunking="tokens",
                                             chunk_tokens=16, overlap=4))


class Load(threading.Thread):
    """Inserts, content updates, metadata updates and deletes at random, plus the odd empty
    doc (a genuinely bad item), for ``duration_s``. Rides out database restarts."""

    def __init__(self, fleet: ChaosFleet, duration_s: float, seed: int = 1, pause_s: float = 0.02):
        super().__init__(daemon=True)
        self.fleet, self.duration_s, self.pause_s = fleet, duration_s, pause_s
        self.rng = random.Random(seed)
        self.ops = 0
        self.errors = 0
        self.counter = 0

    def text(self) -> str:
        self.counter += 1
        return f"{self.counter}: " + " ".join(self.rng.choices(WORDS, k=self.rng.randint(4, 20)))

    def run(self) -> None:
        from pgfleet.errors import PgfleetError

        deadline = time.monotonic() + self.duration_s
        conn = None
        while time.monotonic() < deadline:
            try:
                if conn is None or conn.closed:
                    conn = self.fleet.connect()
                self.step(conn)
                self.ops += 1
            except (PgfleetError, Exception):  # noqa: BLE001 - a restart is part of the test
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()

    def step(self, conn) -> None:
        roll = self.rng.random()
        # the same kind of change to docs and to the user's table
        if roll < 0.5:
            texts = [self.text() for _ in range(self.rng.randint(1, 5))]
            conn.execute("INSERT INTO docs (content) SELECT unnest(%s::text[])", (texts,))
            conn.execute("INSERT INTO notes (title, body) SELECT 'note', unnest(%s::text[])",
                         ([self.text() for _ in texts],))
        elif roll < 0.75:
            conn.execute("UPDATE docs SET content = %s WHERE id = (SELECT id FROM docs "
                         "ORDER BY random() LIMIT 1)", (self.text(),))
            conn.execute("UPDATE notes SET body = %s WHERE id = (SELECT id FROM notes "
                         "ORDER BY random() LIMIT 1)", (self.text(),))
        elif roll < 0.85:
            conn.execute("DELETE FROM docs WHERE id = (SELECT id FROM docs ORDER BY random() "
                         "LIMIT 1)")
            conn.execute("DELETE FROM notes WHERE id = (SELECT id FROM notes ORDER BY random() "
                         "LIMIT 1)")
        elif roll < 0.97:
            conn.execute("UPDATE docs SET metadata = jsonb_build_object('n', %s) WHERE id = "
                         "(SELECT id FROM docs ORDER BY random() LIMIT 1)", (self.ops,))
            conn.execute("UPDATE notes SET stars = %s WHERE id = (SELECT id FROM notes "
                         "ORDER BY random() LIMIT 1)", (self.ops,))
        else:
            conn.execute("INSERT INTO docs (content) VALUES ('   ')")
            conn.execute("INSERT INTO notes (title, body) VALUES ('', '   ')")


@dataclass
class Outcome:
    name: str
    faults: int
    docs: int = 0
    ops: int = 0
    settle_s: float = 0.0
    extra: dict = field(default_factory=dict)


def settle_and_verify(fleet: ChaosFleet, outcome: Outcome, *, timeout_s: float = 120.0) -> None:
    """Wait for the fleet to finish, then check the end state and record the figures."""
    from pgfleet.embedding.verify import verify
    from pgfleet.sources import catalog

    started = time.monotonic()
    with fleet.connect() as conn:
        wait_until(lambda: conn.execute(
            "SELECT (SELECT count(*) FROM pending_embeddings) + "
            "(SELECT count(*) FROM source_pending) + "
            "(SELECT count(*) FROM source_changes)").fetchone()[0] == 0, timeout_s,
            interval_s=0.2, message="nothing pending")
        outcome.settle_s = round(time.monotonic() - started, 2)
        [report] = verify(conn)
        [notes] = catalog.verify(conn)
        reasons = {r[0] for r in conn.execute("SELECT DISTINCT reason FROM embedding_failures")}
        note_reasons = {r[0] for r in conn.execute(
            "SELECT DISTINCT reason FROM source_failures")}
        blank_notes = conn.execute("SELECT count(*) FROM notes WHERE btrim(title || body) = ''"
                                   ).fetchone()[0]
    outcome.extra["notes"] = notes["rows"]
    for problem in ("missing", "stale", "orphaned", "duplicated"):
        assert notes[problem] == 0, notes
    assert notes["failed"] == blank_notes, notes     # only genuinely bad rows failed
    assert note_reasons <= {"empty text"}, note_reasons
    outcome.docs = report["docs"]
    assert report["missing"] == 0, report
    assert report["stale"] == 0, report
    assert report["orphaned"] == 0 and report["duplicated"] == 0, report
    assert report["failed_with_content"] == 0, report  # only genuinely bad items failed
    assert reasons <= {"empty content"}, reasons


def record(outcome: Outcome) -> None:
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with open(artifacts / "chaos-report.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(outcome.__dict__) + "\n")
    print(f"\n{outcome.name}: {outcome.docs} docs checked, {outcome.faults} faults, "
          f"{outcome.ops} ops, settled in {outcome.settle_s} s {outcome.extra or ''}")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet(tmp_path_factory.mktemp("chaos"))
    fleet.start_servers()
    fleet.start_fleet()
    try:
        with fleet.connect() as conn:
            doc = conn.execute("INSERT INTO docs (content) VALUES ('warm-up') RETURNING id"
                               ).fetchone()[0]
            wait_until(lambda: conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                            (doc,)).fetchone(), 120, message="warm-up embedded")
        yield fleet
    finally:
        if fleet.supervisor is not None:
            fleet.stop_fleet()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "chaos-fleet.log").write_text(fleet.logs(), "utf-8")
        for secret in (WORKER_PASSWORD, REDIS_PASSWORD):
            assert secret not in fleet.logs(), "a credential reached the logs"
        fleet.redis.stop()
        fleet.pg.stop()


@pytest.fixture
def fresh(chaos) -> ChaosFleet:
    with chaos.connect() as conn:
        conn.execute("TRUNCATE docs, model_cache, inference_logs RESTART IDENTITY CASCADE")
        conn.execute("TRUNCATE notes RESTART IDENTITY")
    return chaos
