"""Fault tests of the embedded servers under ``pgfleet up``, as a person runs it: SIGKILL
the embedded Redis or PostgreSQL while docs are inserted; ``pgfleet up`` starts it again
(same port, data and password) and the fleet settles without anyone doing anything.
Figures go to ``test-artifacts/chaos-report.jsonl`` with the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.chaos.conftest import (
    FLEET_ENV,
    Load,
    Outcome,
    add_notes_source,
    record,
    settle_and_verify,
)
from tests.conftest import ROOT, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(400)]


class UpFleet:
    """A fleet started with ``pgfleet up`` in a home of its own."""

    def __init__(self, home: Path, log: Path):
        self.home, self.log = home, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGFLEET_")}
        env.update(FLEET_ENV, PGFLEET_HOME=str(self.home))
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                # the servers' faults, on the processes that use them; the API's restart
                # is tested in tests/e2e/test_cli.py
                [sys.executable, "-m", "pgfleet.cli", "up", "--no-flower", "--no-metrics",
                 "--no-api"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def state(self) -> dict:
        try:
            return json.loads((self.home / "fleet.json").read_text("utf-8"))
        except (OSError, ValueError):
            return {}

    def pid(self, name: str) -> int | None:
        return (self.state().get("children") or {}).get(name)

    def connect(self):
        from pgfleet import db

        return db.connect(self.state()["database_url"], autocommit=True)

    def defunct(self) -> list[int]:
        assert self.process is not None
        return [p.pid for p in psutil.Process(self.process.pid).children()
                if p.status() == psutil.STATUS_ZOMBIE]

    def logs(self) -> str:
        texts = [p.read_text("utf-8", errors="replace") for p in (self.home / "logs").glob("*")]
        return "\n".join([self.log.read_text("utf-8", errors="replace"), *texts])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def up_fleet(tmp_path_factory) -> Iterator[UpFleet]:
    home = tmp_path_factory.mktemp("up-chaos")
    fleet = UpFleet(home / "home", home / "up.log")
    fleet.start()
    try:
        wait_until(lambda: {"worker-gpu", "postgres", "redis"} <= set(
            fleet.state().get("children") or {}), 120, interval_s=0.2,
            message="pgfleet up with its children")
        with fleet.connect() as conn:
            add_notes_source(conn)
            doc = conn.execute("INSERT INTO docs (content) VALUES ('warm-up') RETURNING id"
                               ).fetchone()[0]
            wait_until(lambda: conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                            (doc,)).fetchone(), 180, message="warm-up embedded")
        yield fleet
    finally:
        fleet.stop()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        logs = fleet.logs()
        (artifacts / "chaos-up-fleet.log").write_text(logs, "utf-8")
        secrets = json.loads((fleet.home / "credentials.json").read_text())
        assert all(secret not in logs for secret in secrets.values()), "a secret reached a log"


def _kill_server_during_load(fleet: UpFleet, name: str) -> Outcome:
    with fleet.connect() as conn:
        conn.execute("TRUNCATE docs, model_cache, inference_logs RESTART IDENTITY CASCADE")
        conn.execute("TRUNCATE notes RESTART IDENTITY")
    load = Load(fleet, duration_s=10)
    load.start()
    time.sleep(3)
    old = fleet.pid(name)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: fleet.pid(name) not in (None, old), 90, interval_s=0.1,
               message=f"{name} started again")
    restarted_s = round(time.monotonic() - killed, 2)
    assert psutil.Process(fleet.pid(name)).is_running()
    load.join(90)
    outcome = Outcome(f"embedded {name} SIGKILL under pgfleet up", faults=1, ops=load.ops,
                      extra={"restarted_after_s": restarted_s,
                             "requeue_after_s": float(FLEET_ENV["PGFLEET_REQUEUE_AFTER_S"])})
    settle_and_verify(fleet, outcome, timeout_s=180)
    outcome.extra["kill_to_settled_s"] = round(time.monotonic() - killed, 2)
    assert fleet.defunct() == []
    assert f"{name} exited with code -9" in fleet.logs()
    record(outcome)
    return outcome


def test_sigkill_the_embedded_redis_under_pgfleet_up(up_fleet):
    outcome = _kill_server_during_load(up_fleet, "redis")
    # the broker's messages died with it: work is republished from PostgreSQL
    assert outcome.docs > 0


def test_sigkill_the_embedded_postgres_under_pgfleet_up(up_fleet):
    outcome = _kill_server_during_load(up_fleet, "postgres")
    assert outcome.docs > 0
