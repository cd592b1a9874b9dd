"""One bad item must not fail its neighbours: the pipeline in-process against the real
database, with an engine that fails on purpose (the model's own behaviour is covered by the
fleet tests; this checks pgfleet's isolation, backoff and recording)."""

from __future__ import annotations

import pytest

from pgfleet import db
from pgfleet.embedding.pipeline import EmbedPipeline
from pgfleet.settings import Settings
from pgfleet.testing import FakeEngine

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(scratch_url):
    pool = db.open_pool(scratch_url, min_size=1, max_size=2)
    engines = {}

    def load(spec):
        return engines.setdefault(spec.version_id, FakeEngine(spec, poison="POISON"))

    settings = Settings(max_attempts=3, retry_base_s=0.0, retry_max_s=0.0, batch_max_docs=64)
    yield EmbedPipeline(pool, settings, load, name="test", sleep=lambda s: None), engines
    pool.close()


def _insert(conn, texts):
    return [r[0] for r in conn.execute(
        "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (texts,))]


def _pending(conn):
    return [r[0] for r in conn.execute("SELECT doc_id FROM pending_embeddings ORDER BY doc_id")]


def test_a_model_poison_item_is_isolated_retried_then_recorded(pipeline, scratch):
    run, engines = pipeline
    ids = _insert(scratch, ["fine one", "a POISON pill", "fine two", "fine three"])
    run.run(1, ids)
    embedded = {r[0] for r in scratch.execute("SELECT doc_id FROM embeddings")}
    assert embedded == {ids[0], ids[2], ids[3]}
    assert _pending(scratch) == [ids[1]]  # waiting for its retry
    for _ in range(2):  # the retries (backoff is 0 here), each one alone
        run.run(1, [ids[1]])
    assert _pending(scratch) == []
    row = scratch.execute("SELECT reason, attempts, last_error, first_failed_at <= last_failed_at "
                          "FROM embedding_failures").fetchone()
    assert row[0] == "model error" and row[1] == 3 and "POISON" in row[2] and row[3]
    assert engines[1].calls[-1] == ["a POISON pill"]


def test_a_write_poison_item_is_isolated(pipeline, scratch):
    run, _ = pipeline
    ids = _insert(scratch, ["first", "refused by the database", "third"])
    scratch.execute(f"""
        CREATE OR REPLACE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.doc_id = {ids[1]} THEN RAISE EXCEPTION 'refused doc %', NEW.doc_id; END IF;
            RETURN NEW;
        END $$""")
    scratch.execute("CREATE TRIGGER refuse_one BEFORE INSERT ON embeddings "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_one()")
    try:
        run.run(1, ids)
        embedded = {r[0] for r in scratch.execute("SELECT doc_id FROM embeddings")}
        assert embedded == {ids[0], ids[2]}
        reason, error = scratch.execute(
            "SELECT reason, last_error FROM embedding_failures WHERE doc_id = %s",
            (ids[1],)).fetchone()
        assert reason == "write error" and f"refused doc {ids[1]}" in error
    finally:
        scratch.execute("DROP TRIGGER refuse_one ON embeddings")


def test_a_doc_whose_worker_keeps_dying_is_recorded(pipeline, scratch):
    from pgfleet.embedding.deaths import record_deaths

    run, _ = pipeline
    [doc] = _insert(scratch, ["kills the worker, say"])
    # two deaths counted already; a third pool process started it, and died too
    scratch.execute("UPDATE pending_embeddings SET attempts = 2, started_at = now(), "
                    "started_by = 'host:99'")
    with db.connect(run.pool.conninfo, autocommit=True) as main:
        counted = record_deaths(main, worker="host:99", items=[(1, doc)], max_attempts=3,
                                error="the worker process running its batch died")
    assert counted == {"counted": 1, "given_up": 1}
    reason, attempts = scratch.execute(
        "SELECT reason, attempts FROM embedding_failures").fetchone()
    assert reason == "worker died" and attempts == 3
    assert _pending(scratch) == []
    run.run(1, [doc])  # its message, republished, is a no-op
    assert scratch.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
