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

from pgfleet import db
from tests.conftest import ROOT, Proc, create_database, run_cli, wait_until
from tests.integration.test_text2sql_data import SHOP

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


@pytest.fixture
def reader(services, shop_url):
    from pgfleet.text2sql import connect_reader

    with connect_reader(services.reader_url_for(shop_url)) as session:
        yield session


@pytest.fixture(scope="module")
def env(services, shop_url, tmp_path_factory):
    return services.env(PGFLEET_DATABASE_URL=shop_url,
                        PGFLEET_READER_URL=services.reader_url_for(shop_url),
                        PGFLEET_HOME=str(tmp_path_factory.mktemp("t2s-home")),
                        PGFLEET_TRAINING_HEARTBEAT_S="0.5", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    from pgfleet.ops.supervisor import fleet_children

    spec = next(s for s in fleet_children(flower_port=None) if s.name == "worker-training")
    proc = Proc("worker-t2s-training", spec.argv, env,
                tmp_path_factory.mktemp("t2s-logs")).start()
    yield proc
    proc.stop()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "worker-t2s-training.log").write_text(proc.log(), "utf-8")


def _call(env, kwargs: dict, task: str = "train_text2sql") -> str:
    called = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "call", task,
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


#: small and short enough for two shared CPU cores, large enough to learn the templates
SMALL = {"d_model": 96, "layers": 2, "max_eval": 120, "beams": 2}


@pytest.mark.timeout(1800)
def test_a_small_model_answers_held_out_questions_of_its_templates(env, worker, shop):
    """The accuracy the feature exists for, at test scale: trained from scratch on the
    synthesized set, through the training queue, measured on held-out examples (SQL never
    seen, values masked) by execution accuracy."""
    # the run's own heartbeat and time limit end it: the wait only bounds a hang (on two
    # cores shared with other work it took 790 s and 1,009 s; alone, 153 s)
    run = _final_run(shop, _call(env, SMALL), timeout_s=1700)
    assert run["status"] == "succeeded", run["error"]
    metrics = shop.execute("SELECT metrics FROM model_versions WHERE id = %s",
                           (run["version_id"],)).fetchone()[0]
    held = metrics["held_out"]
    assert held["examples"] == 120
    assert held["execution_accuracy_guided"] >= 0.85, held
    assert metrics["options"]["mask_values"] is True


def test_garbage_beams_give_no_sql_and_every_reason(trained, shop, reader, env):
    from pgfleet.text2sql import model
    from pgfleet.text2sql.generate import NO_CANDIDATE, generate_sql

    untrained = model.build(config={"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
                                    "num_decoder_layers": 1, "num_heads": 2}, seed=3)
    untrained.model.generation_config.max_new_tokens = 24
    answer = generate_sql(shop, "how many orders are paid?", reader=reader, model=untrained,
                          beams=3)
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
        from pgfleet.text2sql.guard import check_sql

        assert result.returncode == 0 and check_sql(out["sql"], reader).ok
    else:
        assert result.returncode == 1 and out["sql"] is None and len(out["rejected"]) == 2


def test_hostile_candidates_are_all_rejected_and_the_safe_one_chosen(shop, reader):
    from pgfleet.text2sql.generate import choose
    from pgfleet.text2sql.guard import check_sql

    hostile = [
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "COMMIT; DELETE FROM orders",
        "SET TRANSACTION READ WRITE",
        "SELECT pg_sleep(10)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT count(*) FROM orders; SELECT 1",
        "SELECT nope FROM orders",
        "SELECT * FROM ts_stat('SELECT to_tsvector(rolname) FROM pg_authid')",
        "SELECT pg_catalog.lower(status) FROM orders",
    ]
    choice = choose([*hostile, "SELECT count(*) FROM orders WHERE status = 'paid'"],
                    lambda sql: check_sql(sql, reader))
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


# ------------------------------------------------------------------------- distillation
def test_a_student_is_distilled_from_the_trained_version(trained, shop, env, worker):
    assert trained["status"] == "succeeded", trained["error"]
    run = _final_run(shop, _call(env, {"from_version": str(trained["version_id"]),
                                       "d_model": 16, "epochs": 1, "max_examples": 64,
                                       "max_eval": 4, "beams": 2, "synth_per_template": 4,
                                       "synth_phrasings": 1, "synth_rounds": 1},
                                 task="distill_text2sql"))
    assert run["status"] == "succeeded", (run["error"], worker.log()[-3000:])
    parent, metrics, artifact = shop.execute(
        "SELECT parent_id, metrics, artifact FROM model_versions WHERE id = %s",
        (run["version_id"],)).fetchone()
    assert parent == trained["version_id"]
    compared = metrics["compared"]
    assert compared["parameters_ratio"] < 1 and compared["questions_per_s"]["student"] > 0
    assert metrics["teacher_held_out"]["examples"] == metrics["held_out"]["examples"] == 4
    assert metrics["options"]["alpha"] == 0.5 and metrics["options"]["temperature"] == 2.0
    config = json.loads((ROOT / artifact / "config.json").read_text())
    assert config["d_model"] == 16 and config["num_layers"] == 1
    bad = _final_run(shop, _call(env, {"from_version": "v999"}, task="distill_text2sql"))
    assert bad["status"] == "failed" and "no text2sql version 'v999'" in bad["error"]


# ------------------------------------------------------------------------- A/B routing
def test_requests_follow_the_split_sticky_per_key_and_are_logged(trained, shop, env):
    from pgfleet.text2sql.generate import route

    name = shop.execute("SELECT name FROM model_versions WHERE id = %s",
                        (trained["version_id"],)).fetchone()[0]
    versions = [r[0] for r in shop.execute(
        "SELECT version FROM model_versions WHERE name = %s AND kind = 'text2sql' "
        "ORDER BY id", (name,))]
    assert len(versions) >= 2  # the trained one and the distilled student
    first, second = versions[0], versions[1]
    split = run_cli("ab", "set", name, f"{first}=50", f"{second}=50", env=env)
    assert split.returncode == 0, split.stderr
    try:
        chosen = {route(shop, key=f"user-{i}").version for i in range(40)}
        assert chosen == {first, second}  # both serve
        assert len({route(shop, key="user-7").version for _ in range(10)}) == 1  # sticky
        answers = [json.loads(run_cli("sql", "how many orders are paid?", "--key", "user-7",
                                      "--beams", "2", "--json", env=env,
                                      timeout_s=120).stdout) for _ in range(2)]
        assert answers[0]["version"] == answers[1]["version"] == \
            f"{name}@{route(shop, key='user-7').version}"
        logged = shop.execute("SELECT version_id FROM inference_logs WHERE id = ANY(%s)",
                              ([a["log_id"] for a in answers],)).fetchall()
        assert {r[0] for r in logged} == {answers[0]["version_id"]}
        report = json.loads(run_cli("ab", "status", name, "--json", env=env).stdout)
        assert report["kind"] == "text2sql"
        served = {v["version"]: v for v in report["versions"]}
        assert served[route(shop, key="user-7").version]["requests"] >= 2
        promoted = run_cli("ab", "promote", name, second, env=env)
        assert promoted.returncode == 0, promoted.stderr
        assert {route(shop, key=f"user-{i}").version for i in range(20)} == {second}
        assert run_cli("ab", "rollback", name, env=env).returncode == 0
        assert {route(shop, key=f"user-{i}").version for i in range(40)} == {first, second}
    finally:
        shop.execute("UPDATE model_versions SET active = false, traffic_percent = 0 "
                     "WHERE name = %s", (name,))


def test_the_api_answers_sql_as_the_command_line_does(trained, shop, env, services, tmp_path):
    from tests.conftest import start_api

    name, label = shop.execute("SELECT name, version FROM model_versions WHERE id = %s",
                               (trained["version_id"],)).fetchone()
    assert run_cli("ab", "set", name, f"{label}=100", env=env).returncode == 0
    api = start_api(services, tmp_path, database_url=env["PGFLEET_DATABASE_URL"],
                    key_name="t2s")
    try:
        question = "how many orders are paid?"
        here = run_cli("sql", question, "--run", "--beams", "2", "--json", env=env,
                       timeout_s=120)
        response = api.post("/v1/sql", {"question": question, "run": True, "beams": 2})
        assert response.status_code == 200, response.text
        answer = response.json()
        local = json.loads(here.stdout)
        for field in ("sql", "version", "beam", "ok", "columns", "rows"):
            assert answer.get(field) == local.get(field), field
        through = run_cli("sql", question, "--run", "--beams", "2", "--json", timeout_s=120,
                          env={**env, "PGFLEET_API_URL": api.url, "PGFLEET_API_KEY": api.key})
        assert through.returncode == here.returncode
        assert json.loads(through.stdout)["sql"] == local["sql"]
        # the loaded model answers fast: the second request pays no load
        again = api.post("/v1/sql", {"question": "how many customers are there?", "beams": 2})
        assert again.status_code == 200 and again.json()["latency_ms"] < 5000
        assert api.post("/v1/sql", {"question": question, "beams": 99}).json()["error"][
            "param"] == "beams"
    finally:
        api.proc.stop()
        shop.execute("UPDATE model_versions SET active = false, traffic_percent = 0 "
                     "WHERE name = %s", (name,))


# ------------------------------------------------------------------------- the benchmark
def test_bench_text2sql_scores_a_version_and_the_references_on_defog(trained, env):
    gold = run_cli("bench", "text2sql", "--reference", "gold", "--limit", "12", "--json",
                   env=env, timeout_s=180)
    assert gold.returncode == 0, gold.stderr
    report = json.loads(gold.stdout)
    assert (report["scored"], report["correct"], report["accuracy"]) == (12, 12, 1.0)
    select1 = json.loads(run_cli("bench", "text2sql", "--reference", "select1", "--limit",
                                 "12", "--json", env=env, timeout_s=180).stdout)
    assert select1["scored"] == 12 and select1["accuracy"] < 0.2

    model = run_cli("bench", "text2sql", "--version", str(trained["version_id"]), "--beams",
                    "2", "--limit", "6", "--json", env=env, timeout_s=300)
    assert model.returncode == 0, model.stderr
    scored = json.loads(model.stdout)
    assert scored["model"].startswith("text2sql@v") and scored["scored"] == 6
    assert 0 <= scored["accuracy"] <= 1 and set(scored["by_database"]) == {"academic"}


def test_two_runs_ending_at_once_get_two_versions(shop, services, tmp_path, monkeypatch):
    """The label is taken at registration: a run that finds its label taken by another run
    meanwhile takes the next one, and each run's files are its own."""
    from pgfleet.settings import Settings
    from pgfleet.text2sql import model
    from pgfleet.training import text2sql as job

    taken = shop.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, status, active, "
        "traffic_percent) VALUES ('race', 'v1', 'text2sql', 'torch', '/nowhere', 'ready', "
        "false, 0) RETURNING id").fetchone()[0]
    labels = iter(["v1", "v2"])  # the first as if computed just before the other run's insert
    monkeypatch.setattr(job, "_version_label", lambda conn, name: next(labels))

    class FakeRun:
        id = 999_001

    seq = model.build(config={"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1,
                              "num_decoder_layers": 1, "num_heads": 4}, seed=1)
    result = job.save_and_register(
        shop, Settings(home=tmp_path), FakeRun(), seq, task="train_text2sql", name="race",
        losses=[1.0, 0.5], metrics={"held_out": {"execution_accuracy": 0.0,
                                                 "execution_accuracy_guided": 0.0}})
    assert result["version"] == "v2" and result["version_id"] != taken
    assert result["artifact"].endswith("race-run999001")
    assert (tmp_path / "models" / "race-run999001" / "config.json").is_file()
    shop.execute("DELETE FROM model_versions WHERE name = 'race'")
