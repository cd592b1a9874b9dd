"""``pgfleet status`` against a running fleet (real PostgreSQL, Redis, producer and worker):
the JSON every tool reads, the dashboard a person reads, ``--watch``, and what it says when
Redis cannot be reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def env(fleet, tmp_path):
    return fleet.services.env(PGFLEET_HOME=str(tmp_path), COLUMNS="160")


@pytest.fixture
def state(fleet, clean):
    """A doc embedded, a failure, a queued training run and messages waiting in a queue
    that nobody consumes here."""
    import redis

    from pgfleet.training import runs

    doc_id = clean.execute("INSERT INTO docs (content) VALUES ('status is at a glance') "
                           "RETURNING id").fetchone()[0]
    wait_until(lambda: clean.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                     (doc_id,)).fetchone(), 60, message="embedded")
    bad = clean.execute("INSERT INTO docs (content) VALUES ('   ') RETURNING id").fetchone()[0]
    wait_until(lambda: clean.execute("SELECT 1 FROM embedding_failures WHERE doc_id = %s",
                                     (bad,)).fetchone(), 60, message="failure recorded")
    clean.execute("DELETE FROM training_runs")
    run_id = runs.create(clean, "train_embeddings", {"epochs": 1})
    client = redis.Redis.from_url(fleet.services.redis_url)
    # two plain messages and one of priority 3, as kombu's Redis transport stores them
    client.lpush("embed.cpu", "x", "y")
    client.lpush("embed.cpu\x06\x163", "z")
    yield {"doc_id": doc_id, "failed": bad, "run_id": run_id}
    client.delete("embed.cpu", "embed.cpu\x06\x163")
    client.close()
    clean.execute("DELETE FROM training_runs")


def test_json_has_versions_queues_workers_splits_runs_and_failures(env, state):
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [version] = data["versions"]
    assert version["docs"] == 2 and version["embedded"] == 1 and version["failed"] == 1
    assert version["coverage"] == 0.5 and version["pending"] == 0
    assert version["oldest_pending_s"] is None
    queues = {q["name"]: q for q in data["queues"]}
    assert set(queues) == {"embed.gpu", "embed.cpu", "training"}
    assert queues["embed.cpu"]["depth"] == 3 and queues["embed.cpu"]["consumers"] == []
    [worker] = data["workers"]
    assert worker["name"].startswith("gpu@") and worker["online"]
    assert worker["queues"] == ["embed.gpu"]
    assert 0 <= worker["last_heartbeat_age_s"] < 5, worker
    assert queues["embed.gpu"]["consumers"] == [worker["name"]]
    assert data["ab"] == [{"name": "all-minilm-l6-v2", "kind": "embedding", "split": {"v1": 100},
                           "last_action": None, "changed_at": None}]
    [run] = data["training"]
    assert (run["id"], run["task"], run["status"]) == (state["run_id"], "train_embeddings",
                                                       "queued")
    [failure] = data["failures"]
    assert failure["doc_id"] == state["failed"] and failure["reason"] == "empty content"


def test_the_dashboard_reads_at_a_glance(env, state):
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for heading in ("model versions", "queues", "workers", "A/B splits",
                    "recent training runs", "recent failures"):
        assert heading in text, heading
    assert "1 worker(s) online, 0 doc(s) pending, 3 message(s) waiting" in text
    assert "all-minilm-l6-v2@v1" in text and "50%" in text  # coverage
    assert "v1 100%" in text and "none online" in text and "gpu@" in text
    assert "s ago" in text and "empty content" in text and "queued" in text, text
    assert "Traceback" not in result.stderr


def test_watch_refreshes_until_interrupted(env, state):
    proc = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "status", "--watch", "--json",
                             "--interval", "0.5"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave it running into the next tests
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert len({line["generated_at"] for line in lines}) >= 2
    assert all(line["workers"][0]["queues"] == ["embed.gpu"] for line in lines)

    live = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "status", "--watch",
                             "--interval", "0.5"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    # off a terminal, rich's Live shows its last view when it stops
    time.sleep(3)
    os.killpg(live.pid, signal.SIGINT)
    try:
        out, err = live.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        live.kill()
        live.communicate()
        raise
    assert live.returncode == 0, err
    assert "pgfleet status at" in out and "gpu@" in out and "Traceback" not in err


def test_a_bad_interval_and_an_unreachable_redis_are_said_clearly(fleet, tmp_path):
    env = fleet.services.env(PGFLEET_HOME=str(tmp_path), COLUMNS="160")
    bad = run_cli("status", "--watch", "--interval", "0", env=env)
    assert bad.returncode == 2 and "--interval" in bad.stderr and "0.5" in bad.stderr
    down = run_cli("status", "--json",
                   env={**env, "PGFLEET_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"},
                   timeout_s=60)
    assert down.returncode == 0, down.stderr
    data = json.loads(down.stdout)
    assert data["workers"] == [] and all(q["depth"] is None for q in data["queues"])
    assert data["versions"], data
    assert "cannot read the queues' depth" in down.stderr
    assert "s3cret" not in down.stdout + down.stderr
    assert "Traceback" not in down.stderr
