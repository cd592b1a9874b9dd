"""The text-to-SQL model with a real training worker, PostgreSQL and Redis: a tiny T5
trained on the training queue (called as `celery call` does), generation that never lets
SQL past the guard, and clear errors for a missing base model and bad arguments.

The model here is far too small and short-trained to be good: these tests check the
machinery. The accuracy target is measured by hand (see docs/text2sql.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Proc, create_database, run_cli, wait_until
from tests.integration.test_text2sql_data import SHOP
from workers import db

pytestmark = pytest.mark.integration

#: a model of a few thousand parameters, one epoch on a few examples
TINY = {"d_model": 32, "layers": 1, "epochs": 1, "batch_size": 16, "max_examples": 64,
        "max_eval": 6, "beams": 2, "synth_per_template": 4, "synth_phrasings": 1,
        "synth_rounds": 1}


@pytest.fixture(scope="module")
def shop_url(services):
    url = create_database(services, "pgfleet_t2s_model")
    with db.connect(url, autocommit=True) as conn:
        conn.execute(SHOP)
    return url


@pytest.fixture
def shop(shop_url):
    with db.connect(shop_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def env(services, shop_url, tmp_path_factory):
    return services.env(PGFLEET_DATABASE_URL=shop_url,
                        PGFLEET_HOME=str(tmp_path_factory.mktemp("t2s-home")),
                        PGFLEET_TRAINING_HEARTBEAT_S="0.5", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    from pgfleet.supervisor import fleet_children

    spec = next(s for s in fleet_children(flower_port=None) if s.name == "worker-training")
    proc = Proc("worker-t2s-training", spec.argv, env,
                tmp_path_factory.mktemp("t2s-logs")).start()
    yield proc
    proc.stop()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "worker-t2s-training.log").write_text(proc.log(), "utf-8")


def _call(env, kwargs: dict) -> str:
    called = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "call", "train_text2sql",
         "--kwargs", json.dumps(kwargs)], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert called.returncode == 0, called.stderr
    return called.stdout.strip().splitlines()[-1]


def _final_run(conn, task_id: str, timeout_s: float = 180) -> dict:
    from psycopg.rows import dict_row

    def row():
        with conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute("SELECT * FROM training_runs WHERE celery_task_id = %s",
                                (task_id,)).fetchone()
        return found if found and found["status"] in ("succeeded", "failed",
                                                      "cancelled") else None

    return wait_until(row, timeout_s, interval_s=0.3, message="the text2sql run to end")


@pytest.fixture(scope="module")
def trained(env, worker, shop_url):
    """The run of a tiny model trained through `celery call` (examples synthesized)."""
    with db.connect(shop_url, autocommit=True) as conn:
        return _final_run(conn, _call(env, TINY))


def test_a_tiny_model_trains_on_the_training_queue_and_is_registered(trained, shop, worker):
    assert trained["status"] == "succeeded", (trained["error"], worker.log()[-3000:])
    assert trained["step"] == trained["total_steps"] > 0 and trained["losses"]
    kind, fmt, status, active, dims, metrics, artifact = shop.execute(
        "SELECT kind, format, status, active, dimensions, metrics, artifact "
        "FROM model_versions WHERE id = %s", (trained["version_id"],)).fetchone()
    assert (kind, fmt, status, active, dims) == ("text2sql", "torch", "ready", False, None)
    held = metrics["held_out"]
    assert held["examples"] == 6 and held["beams"] == 2
    for name in ("exact_match", "execution_accuracy", "execution_accuracy_guided"):
        assert 0 <= held[name] <= 1
    assert metrics["examples"]["source"].startswith("synthesized from the live schema")
    assert metrics["parameters"] < 100_000
    # nothing was stored: the synthesized set lived for the run only
    assert shop.execute("SELECT count(*) FROM text2sql_examples").fetchone()[0] == 0
    assert (trained["artifacts"]["loss_curve"] or "").endswith("loss.png")
    assert json.loads((ROOT / artifact / "config.json").read_text())["d_model"] == 32


def test_garbage_beams_give_no_sql_and_every_reason(trained, shop, env):
    from workers.text2sql import model
    from workers.text2sql.generate import NO_CANDIDATE, generate_sql

    untrained = model.build(config={"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
                                    "num_decoder_layers": 1, "num_heads": 2}, seed=3)
    untrained.model.generation_config.max_new_tokens = 24
    answer = generate_sql(shop, "how many orders are paid?", model=untrained, beams=3)
    assert answer.sql is None and answer.beam is None
    assert answer.why == f"{NO_CANDIDATE}: all 3 beam(s) were rejected"
    assert [r["beam"] for r in answer.rejected] == [0, 1, 2]
    assert all(r["reasons"] for r in answer.rejected), answer.rejected
    logged = shop.execute("SELECT task, error, results, batch_size FROM inference_logs "
                          "WHERE id = %s", (answer.log_id,)).fetchone()
    assert logged == ("text2sql", NO_CANDIDATE, None, 1)

    # the registered tiny version through the command: whatever it says passed the guard
    result = run_cli("sql", "how many orders are paid?", "--version",
                     str(trained["version_id"]), "--beams", "2", "--json", env=env,
                     timeout_s=120)
    out = json.loads(result.stdout)
    assert out["version_id"] == trained["version_id"] and len(out["candidates"]) == 2
    if out["ok"]:
        from workers.text2sql.guard import check_sql

        assert result.returncode == 0 and check_sql(out["sql"], shop).ok
    else:
        assert result.returncode == 1 and out["sql"] is None and len(out["rejected"]) == 2


def test_hostile_candidates_are_all_rejected_and_the_safe_one_chosen(shop):
    from workers.text2sql.generate import choose
    from workers.text2sql.guard import check_sql

    hostile = [
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "COMMIT; DELETE FROM orders",
        "SET TRANSACTION READ WRITE",
        "SELECT pg_sleep(10)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT count(*) FROM orders; SELECT 1",
        "SELECT nope FROM orders",
    ]
    choice = choose([*hostile, "SELECT count(*) FROM orders WHERE status = 'paid'"],
                    lambda sql: check_sql(sql, shop))
    assert choice.beam == len(hostile) and choice.sql.upper().startswith("SELECT COUNT(*)")
    assert [r.beam for r in choice.rejected] == list(range(len(hostile)))
    assert all(r.reasons for r in choice.rejected)
    assert shop.execute("SELECT count(*) FROM orders").fetchone()[0] == 300


def test_a_missing_base_model_and_bad_arguments_fail_clearly(env, worker, shop):
    missing = _final_run(shop, _call(env, {**TINY, "d_model": 0, "layers": 0,
                                           "base_model": "/nonexistent"}))
    assert missing["status"] == "failed"
    assert "cannot load" in missing["error"] or "no such model directory" in missing["error"]
    assert "'/nonexistent'" in missing["error"]
    bad = _final_run(shop, _call(env, {"epochs": "three"}))
    assert bad["error"] == "train_text2sql: option epochs must be int, not str ('three')"
    usage = run_cli("sql", "how many orders?", "--check", "SELECT 1", env=env)
    assert usage.returncode == 2 and "not both" in usage.stderr
    none = run_cli("sql", "how many orders?", "--version", "v999", env=env)
    assert none.returncode == 1 and "no text2sql version 'v999'" in none.stderr
