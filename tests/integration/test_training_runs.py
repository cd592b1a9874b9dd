"""The training-run machinery with tiny jobs (Python functions that sleep) against the real
PostgreSQL: a run outlives its connection, cancel and the time limit stop a job that never
reports progress, a job stuck outside Python ends its process, and a run marked failed
stays failed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from pgfleet import db
from pgfleet.training import runs
from tests.conftest import ROOT, create_database, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEARTBEAT_S = 0.2


@pytest.fixture(scope="module")
def runs_url(services) -> str:
    return create_database(services, "pgfleet_runs")


@pytest.fixture
def conn(runs_url):
    with db.connect(runs_url, autocommit=True) as connection:
        connection.execute("TRUNCATE training_runs RESTART IDENTITY")
        yield connection


def _execute(conn, url, job, **kwargs):
    return runs.execute(conn, url, task="tiny", job=job, options={}, run_id=None,
                        heartbeat_s=kwargs.pop("heartbeat_s", HEARTBEAT_S), **kwargs)


def _heartbeat(conn, run_id: int):
    return conn.execute("SELECT heartbeat_at FROM training_runs WHERE id = %s",
                        (run_id,)).fetchone()[0]


def test_a_run_reconnects_when_its_connection_is_lost(conn, runs_url):
    seen = {}

    def job(job_conn, run):
        with db.connect(runs_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s", (f"pgfleet-run-{run.id}",)).fetchone()[0]
            assert killed == 1
            seen["killed_at"] = admin.execute("SELECT now()").fetchone()[0]
            # the heartbeat comes back after the connection was lost ...
            wait_until(lambda: _heartbeat(admin, run.id) > seen["killed_at"], 10,
                       message="a heartbeat after the connection was lost")
            # ... so a reaper that runs now finds a live run
            admin.execute("SELECT pg_sleep(%s)", (HEARTBEAT_S * 3,))
            seen["reaped"] = runs.reap_stale(admin, stale_after_s=HEARTBEAT_S * 2)
        run.progress(1, 1, loss=0.5, force=True)
        return {"metrics": {"answer": 42}}

    result = _execute(conn, runs_url, job)
    assert result["status"] == "succeeded", result
    assert seen["reaped"] == []
    row = runs.get(conn, result["run_id"])
    assert row["status"] == "succeeded" and row["metrics"] == {"answer": 42}
    assert row["step"] == 1 and row["loss"] == 0.5


def test_a_run_survives_a_postgresql_restart(tmp_path):
    """The embedded server stops and starts again under the run: the heartbeat resumes, and
    the outcome is recorded."""
    from pgfleet.ops.services import EmbeddedPostgres
    from schema.migrate import migrate

    server = EmbeddedPostgres(tmp_path / "pg", port=0)
    url = server.start()
    try:
        with db.connect(url) as setup:
            migrate(setup)
        restarted = {}

        def job(job_conn, run):
            server.stop()
            time.sleep(HEARTBEAT_S * 3)  # heartbeats fail meanwhile
            server.start()
            with db.connect(url, autocommit=True) as admin:
                restarted["at"] = admin.execute("SELECT now()").fetchone()[0]
                wait_until(lambda: _heartbeat(admin, run.id) > restarted["at"], 30,
                           message="a heartbeat after the restart")
            return {"metrics": {"restarted": True}}

        with db.connect(url, autocommit=True) as conn:
            result = _execute(conn, url, job)
        with db.connect(url, autocommit=True) as conn:
            row = runs.get(conn, result["run_id"])
        assert row["status"] == "succeeded" and row["metrics"] == {"restarted": True}, row
    finally:
        server.stop()


def _sleeper(limit_s: float = 15.0):
    """A job that never reports progress: it naps in Python until ``limit_s``."""
    def job(job_conn, run):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return {"metrics": {"slept": True}}
    return job


def test_cancel_stops_a_job_that_never_reports_progress(conn, runs_url):
    ids = []

    def cancel_soon():
        wait_until(lambda: conn.execute("SELECT id FROM training_runs WHERE status = "
                                        "'running'").fetchone(), 10, message="a running run")
        ids.append(conn.execute("SELECT id FROM training_runs").fetchone()[0])
        time.sleep(0.3)
        with db.connect(runs_url, autocommit=True) as other:
            assert runs.cancel(other, ids[0]) == "running"

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.monotonic()
    with db.connect(runs_url, autocommit=True) as job_conn:
        result = _execute(job_conn, runs_url, _sleeper())
    canceller.join(10)
    assert result["status"] == "cancelled", result
    assert time.monotonic() - started < 5
    row = runs.get(conn, ids[0])
    assert row["status"] == "cancelled" and row["error"] == "cancelled by request"


def test_the_time_limit_stops_a_job_that_never_reports_progress(conn, runs_url):
    started = time.monotonic()
    result = _execute(conn, runs_url, _sleeper(), time_limit_s=1.0)
    elapsed = time.monotonic() - started
    assert result["status"] == "failed", result
    assert 1.0 <= elapsed < 4, elapsed
    row = runs.get(conn, result["run_id"])
    assert row["status"] == "failed" and "time limit of 1 s" in row["error"], row["error"]


STUCK_SCRIPT = """
import sys, time
from pgfleet import db
from pgfleet.training import runs

url = sys.argv[1]

def job(conn, run):
    time.sleep(60)  # one call into C: no Python runs in this thread to receive the stop

with db.connect(url, autocommit=True) as conn:
    runs.execute(conn, url, task="tiny", job=job, options={}, run_id=None, heartbeat_s=0.2,
                 time_limit_s=0.5, stop_grace_s=1.0)
print("not reached")
"""


def test_a_job_stuck_outside_python_fails_its_run_and_ends_its_process(conn, runs_url):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK_SCRIPT, runs_url], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == runs.EXIT_STUCK, done.stdout + done.stderr
    assert "not reached" not in done.stdout
    assert time.monotonic() - started < 30
    [row] = runs.listing(conn)
    assert row["status"] == "failed" and row["finished_at"] is not None
    assert "time limit of 0.5 s" in row["error"] and "did not stop within 1 s" in row["error"]


def test_finish_after_the_run_was_reaped_keeps_it_failed_and_notes_the_outcome(conn,
                                                                                runs_url):
    version_id = conn.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions) "
        "VALUES ('reaped-model', 'v1', 'embedding', 'torch', '/nowhere', 8) RETURNING id"
    ).fetchone()[0]

    def job(job_conn, run):
        # the run's worker looks dead to the producer (its heartbeats were lost) ...
        job_conn.execute("UPDATE training_runs SET heartbeat_at = now() - interval '1 hour' "
                         "WHERE id = %s", (run.id,))
        assert runs.reap_stale(job_conn, stale_after_s=60) == [run.id]
        # ... while the job goes on and registers its version
        return {"version_id": version_id, "name": "reaped-model", "version": "v1",
                "metrics": {"mrr": 0.5}}

    try:
        result = _execute(conn, runs_url, job, heartbeat_s=30)
        row = runs.get(conn, result["run_id"])
        assert row["status"] == "failed", row
        assert result["status"] == "failed"
        assert "no heartbeat" in row["error"]
        assert "registered reaped-model@v1" in row["error"], row["error"]
        assert row["version_id"] == version_id
        assert row["metrics"]["late_outcome"]["status"] == "succeeded"
        assert row["metrics"]["late_outcome"]["metrics"] == {"mrr": 0.5}
    finally:
        conn.execute("DELETE FROM training_runs")
        conn.execute("DELETE FROM model_versions WHERE id = %s", (version_id,))


def test_a_run_is_finished_only_by_the_worker_that_claimed_it(conn, runs_url):
    run_id = runs.create(conn, "tiny", {})
    row = runs.claim(conn, run_id, "tiny", "host:1")
    run = runs.Run(runs_url, dict(row, worker="host:2"), heartbeat_s=30)
    assert run.finish("succeeded") == "running"  # it is host:1's run
    assert runs.get(conn, run_id)["status"] == "running"


def test_the_heartbeat_does_not_revive_a_run_marked_failed(conn, runs_url):
    run_id = runs.create(conn, "tiny", {})
    row = runs.claim(conn, run_id, "tiny", runs.worker_name())
    conn.execute("UPDATE training_runs SET status = 'failed', heartbeat_at = now() - "
                 "interval '1 hour' WHERE id = %s", (run_id,))
    run = runs.Run(runs_url, row, heartbeat_s=HEARTBEAT_S)
    try:
        time.sleep(HEARTBEAT_S * 4)
        assert _heartbeat(conn, run_id) < conn.execute(
            "SELECT now() - interval '30 minutes'").fetchone()[0]
    finally:
        run.finish("cancelled")


def test_progress_survives_a_lost_connection(conn, runs_url):
    def job(job_conn, run):
        run.progress(1, 10, force=True)
        job_conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                         "application_name = %s", (f"pgfleet-run-{run.id}",))
        for step in range(2, 11):
            run.progress(step, 10, loss=1.0 / step, force=True)
            time.sleep(0.05)
        return {}

    result = _execute(conn, runs_url, job)
    assert result["status"] == "succeeded", result
    row = runs.get(conn, result["run_id"])
    assert row["step"] == 10 and row["status"] == "succeeded"

