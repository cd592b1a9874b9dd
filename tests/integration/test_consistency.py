"""The embedding path keeps its promise (docs/reliability.md) where it is easiest to break:
permanent failures, attempts, concurrent writes, writes that skip the triggers, huge docs
and what "blank" means.
The pipeline runs in-process against the real database (the scratch one, which no worker
consumes), with a fake engine; the fleet tests run the real model."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import psycopg
import pytest

from pgfleet import db
from pgfleet.embedding.pipeline import EmbedPipeline
from pgfleet.embedding.verify import verify
from pgfleet.settings import Settings
from pgfleet.testing import FakeEngine
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class Engine(FakeEngine):
    """FakeEngine with a hook that runs inside ``encode`` (between the fetch and the write)."""

    def __init__(self, spec, *, during_encode=None, **kwargs):
        super().__init__(spec, **kwargs)
        self.during_encode = during_encode

    def encode(self, texts):
        if self.during_encode is not None:
            self.during_encode(texts)
        return super().encode(texts)


@pytest.fixture
def make_pipeline(scratch_url):
    made = []

    def make(*, max_attempts: int = 3, name: str = "test", pool_name: str = "pgfleet-test",
             timeout_s: float = 10.0, **engine_kwargs):
        pool = db.open_pool(scratch_url, min_size=1, max_size=2, name=pool_name,
                            timeout_s=timeout_s)
        engines: dict[int, Engine] = {}

        def load(spec):
            return engines.setdefault(spec.version_id, Engine(spec, **engine_kwargs))

        settings = Settings(max_attempts=max_attempts, retry_base_s=0.0, retry_max_s=0.0)
        pipeline = EmbedPipeline(pool, settings, load, name=name, sleep=lambda s: None)
        pipeline.engines = engines
        made.append(pool)
        return pipeline

    yield make
    for pool in made:
        if not pool.closed:
            pool.close()


def insert(conn, *texts: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (list(texts),))]


def vector_hash(conn, doc_id: int) -> bytes | None:
    row = conn.execute("SELECT content_hash FROM embeddings WHERE doc_id = %s AND version_id = 1",
                       (doc_id,)).fetchone()
    return row[0] if row else None


def pending(conn, doc_id: int):
    return conn.execute("SELECT content_hash, attempts FROM pending_embeddings "
                        "WHERE doc_id = %s AND version_id = 1", (doc_id,)).fetchone()


def failure(conn, doc_id: int):
    return conn.execute("SELECT reason, attempts FROM embedding_failures "
                        "WHERE doc_id = %s AND version_id = 1", (doc_id,)).fetchone()


# 1. a permanent failure for the current content removes the older vector


def test_a_doc_that_fails_for_good_loses_the_vector_of_its_older_content(make_pipeline, scratch):
    run = make_pipeline(poison="POISON")
    [doc] = insert(scratch, "an ordinary doc")
    run.run(1, [doc])
    assert vector_hash(scratch, doc) == sha("an ordinary doc")
    scratch.execute("UPDATE docs SET content = 'now a POISON pill' WHERE id = %s", (doc,))
    for _ in range(3):  # max_attempts; the backoff is 0 here
        run.run(1, [doc])
    assert failure(scratch, doc) == ("model error", 3)
    assert pending(scratch, doc) is None
    assert vector_hash(scratch, doc) is None  # search no longer returns the old content
    [report] = verify(scratch)
    assert report["stale"] == 0 and report["missing"] == 0, report


# 2. attempts count failures and deaths, not fetches


def test_a_doc_fetched_more_often_than_max_attempts_is_still_embedded(make_pipeline, scratch):
    run = make_pipeline(max_attempts=3)
    [doc] = insert(scratch, "delivered many times, never finished")
    spec = run.spec(1)
    for _ in range(10):  # redeliveries, republishing, database errors before the write
        assert [r["doc_id"] for r in run._fetch(spec, [doc])] == [doc]
    run.run(1, [doc])
    assert failure(scratch, doc) is None
    assert vector_hash(scratch, doc) == sha("delivered many times, never finished")


def test_a_database_outage_between_fetch_and_write_spends_no_attempt(
        make_pipeline, scratch, conn):
    def outage(_texts):
        conn.execute("ALTER DATABASE pgfleet_scratch ALLOW_CONNECTIONS false")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = 'pgfleet_scratch' AND application_name = 'outage-test'")

    [doc] = insert(scratch, "written after the database came back")
    down = make_pipeline(max_attempts=1, pool_name="outage-test", timeout_s=0.5,
                         during_encode=outage)
    try:
        report = down.run(1, [doc])
    finally:
        conn.execute("ALTER DATABASE pgfleet_scratch ALLOW_CONNECTIONS true")
    down.pool.close()
    assert report.error is not None and report.written == 0  # left pending
    assert pending(scratch, doc) is not None and failure(scratch, doc) is None
    again = make_pipeline(max_attempts=1)
    again.run(1, [doc])
    assert failure(scratch, doc) is None
    assert vector_hash(scratch, doc) == sha("written after the database came back")


class Died(BaseException):
    """Stands for the pool process dying in the middle of an encode."""


def test_only_the_docs_a_dead_process_had_started_spend_an_attempt(make_pipeline, scratch):
    from pgfleet.embedding.deaths import record_deaths

    def die(texts):
        if any("KILLER" in t for t in texts):
            raise Died

    def main_process_saw_death(worker: str, items) -> dict:
        # what the worker's main process does when a pool process died running a batch
        with db.connect(run.pool.conninfo, autocommit=True) as main:
            return record_deaths(main, worker=worker, items=items, max_attempts=3,
                                 error="the worker process running its batch died")

    run = make_pipeline(max_attempts=3, name="host:4242", during_encode=die)
    bystander, killer = insert(scratch, "a bystander", "the KILLER doc")
    scratch.execute("UPDATE docs SET content = 'the KILLER doc, changed' WHERE id = %s", (killer,))
    # a vector of the killer's older content
    scratch.execute("INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) "
                    "VALUES (%s, 1, array_fill(0.1, ARRAY[384])::vector, %s)",
                    (killer, sha("the KILLER doc")))
    batch = [(1, bystander), (1, killer)]

    with pytest.raises(Died):  # both encoded together: both were started by the dead process
        run.run(1, [bystander, killer])
    assert main_process_saw_death("host:4242", batch) == {"counted": 2, "given_up": 0}
    assert pending(scratch, bystander)[1] == 1 and pending(scratch, killer)[1] == 1

    with pytest.raises(Died):  # now each goes alone: the bystander is embedded first
        run.run(1, [bystander, killer])
    assert vector_hash(scratch, bystander) == sha("a bystander")
    assert main_process_saw_death("host:1", batch)["counted"] == 0  # another process died
    assert main_process_saw_death("host:4242", batch) == {"counted": 1, "given_up": 0}

    with pytest.raises(Died):
        run.run(1, [killer])
    assert main_process_saw_death("host:4242", batch) == {"counted": 1, "given_up": 1}
    assert failure(scratch, killer) == ("worker died", 3)
    assert pending(scratch, killer) is None
    assert vector_hash(scratch, killer) is None  # the older content is not searchable
    assert failure(scratch, bystander) is None
    [report] = verify(scratch)
    assert report["stale"] == 0 and report["missing"] == 0 and report["pending"] == 0, report


# 3. the newer content always wins, whatever the order of concurrent writes


def _write_params(doc_id: int, text: str) -> dict:
    embedding = np.full(384, len(text) / 100, dtype=np.float32)
    return {"version_id": 1, "doc_ids": [doc_id], "hashes": [sha(text)], "vectors": [embedding],
            "miss_hashes": [sha(text)], "miss_vectors": [embedding], "hit_hashes": [],
            "hit_counts": [], "latency_ms": 1.0, "batch_size": 1, "cache_hits": 0,
            "model_calls": 1, "worker": "test"}


def _waiting(conn, application_name: str) -> bool:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                        "AND wait_event_type = 'Lock'", (application_name,)).fetchone()[0] > 0


def test_an_older_vector_never_lands_after_a_newer_content(scratch_url, scratch):
    [doc] = insert(scratch, "zero")
    with db.connect(scratch_url) as c, c.transaction():
        db.fetch_one(c, "write_batch", _write_params(doc, "zero"))
    scratch.execute("UPDATE docs SET content = 'one' WHERE id = %s", (doc,))
    errors: list[BaseException] = []

    def in_thread(name: str, action):
        def run():
            try:
                with db.connect(scratch_url, name=name) as c:
                    c.execute("SET lock_timeout = '20s'")
                    with c.transaction():
                        action(c)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                errors.append(exc)  # the worker runs such a write again
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # B: a transaction holding the doc's vector row (a duplicate's write, say)
    with db.connect(scratch_url, name="holder-b") as b:
        b.execute("SET lock_timeout = '20s'")
        b.execute("SELECT 1 FROM embeddings WHERE doc_id = %s FOR UPDATE", (doc,))
        # A: the write of "one", queued behind B
        writer = in_thread("writer-a", lambda c: db.fetch_one(c, "write_batch",
                                                             _write_params(doc, "one")))
        wait_until(lambda: _waiting(scratch, "writer-a"), 10, message="A waiting for B")
        # the content changes again (before the fix this committed at once)
        updater = in_thread("updater", lambda c: c.execute(
            "UPDATE docs SET content = 'two' WHERE id = %s", (doc,)))
        wait_until(lambda: _waiting(scratch, "updater") or not updater.is_alive(), 10,
                   message="the update done or waiting")
        # B writes the vector of the content it can see
        try:
            db.fetch_one(b, "write_batch", _write_params(doc, "two"))
            b.commit()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            errors.append(exc)
            b.rollback()
    writer.join(30)
    updater.join(30)
    assert not writer.is_alive() and not updater.is_alive()
    content = scratch.execute("SELECT content FROM docs WHERE id = %s", (doc,)).fetchone()[0]
    assert content == "two"
    queued = pending(scratch, doc)
    # the vector is the current content's, or a job for the current content is pending
    assert vector_hash(scratch, doc) == sha("two") or (queued and queued[0] == sha("two")), (
        vector_hash(scratch, doc), queued, errors)


def test_a_fetch_racing_a_content_update_leaves_the_row_to_its_new_message(
        make_pipeline, scratch_url, scratch):
    run = make_pipeline()
    [doc] = insert(scratch, "before")
    fetched: list = []
    with db.connect(scratch_url) as updater:
        # the update's trigger rewrites the pending row; it commits while the fetch waits
        updater.execute("UPDATE docs SET content = 'after' WHERE id = %s", (doc,))
        fetch = threading.Thread(target=lambda: fetched.append(run._fetch(run.spec(1), [doc])))
        fetch.start()
        wait_until(lambda: _waiting(scratch, "pgfleet-test"), 10, message="the fetch waiting")
        updater.commit()
    fetch.join(30)
    [rows] = fetched
    # the fetch saw the old content in its snapshot: it must not claim the row with it
    assert all(r["hash"] == sha("after") for r in rows), rows
    assert pending(scratch, doc)[0] == sha("after")
    run.run(1, [doc])
    assert vector_hash(scratch, doc) == sha("after") and pending(scratch, doc) is None


def test_a_fetch_waiting_for_the_producers_claim_still_takes_the_row(make_pipeline,
                                                                    scratch_url, scratch):
    """The producer commits its claim only after sending the messages, so a worker often
    fetches a row that claim still holds: once it commits, the fetch must take the row
    (skipping it left the doc pending until PGFLEET_REQUEUE_AFTER_S)."""
    import schema

    run = make_pipeline()
    [doc] = insert(scratch, "claimed")
    fetched: list = []
    with db.connect(scratch_url) as producer:
        claimed = producer.execute(schema.query("claim_pending"),
                                   {"limit": 10, "max_priority": 1}).fetchall()
        assert (1, doc) in claimed
        fetch = threading.Thread(target=lambda: fetched.append(run._fetch(run.spec(1), [doc])))
        fetch.start()
        wait_until(lambda: _waiting(scratch, "pgfleet-test"), 10, message="the fetch waiting")
        producer.commit()
    fetch.join(30)
    [rows] = fetched
    assert [r["doc_id"] for r in rows] == [doc]


# 4. writes that skip the triggers


def test_a_change_made_with_triggers_off_is_embedded_and_settles(make_pipeline, scratch):
    run = make_pipeline()
    [doc] = insert(scratch, "queued content")
    with scratch.transaction():  # the pending row now names content the doc no longer has
        scratch.execute("SET LOCAL session_replication_role = replica")
        scratch.execute("UPDATE docs SET content = 'replicated content' WHERE id = %s", (doc,))
    run.run(1, [doc])
    assert vector_hash(scratch, doc) == sha("replicated content")
    assert pending(scratch, doc) is None  # not republished forever


def test_a_blank_change_made_with_triggers_off_is_recorded(make_pipeline, scratch):
    run = make_pipeline()
    [doc] = insert(scratch, "queued content")
    with scratch.transaction():
        scratch.execute("SET LOCAL session_replication_role = replica")
        scratch.execute("UPDATE docs SET content = '  ' WHERE id = %s", (doc,))
    run.run(1, [doc])
    assert failure(scratch, doc) == ("empty content", 1)
    assert pending(scratch, doc) is None


def test_the_reconciler_repairs_what_writes_with_triggers_off_left(make_pipeline, scratch_url,
                                                                  scratch):
    from producers.reconcile import reconcile_missing, repair

    run = make_pipeline()
    kept, deleted, emptied, pending_deleted = insert(
        scratch, "changed with triggers off", "deleted with triggers off", "   ",
        "deleted while pending")
    run.run(1, [kept, deleted, emptied])
    assert failure(scratch, emptied) == ("empty content", 1)
    with scratch.transaction():
        scratch.execute("SET LOCAL session_replication_role = replica")
        scratch.execute("UPDATE docs SET content = 'new words' WHERE id = %s", (kept,))
        scratch.execute("UPDATE docs SET content = 'no longer empty' WHERE id = %s", (emptied,))
        scratch.execute("DELETE FROM docs WHERE id = ANY(%s)", ([deleted, pending_deleted],))
        scratch.execute("INSERT INTO docs (content) VALUES ('inserted with triggers off')")
    [report] = verify(scratch)
    assert report["orphaned"] == 1 and report["stale"] == 1, report
    pool = db.open_pool(scratch_url, min_size=1, max_size=1)
    try:
        repaired = repair(pool)
        assert repaired["vectors"] == 1 and repaired["pending"] == 1
        assert repaired["failures"] == 1  # recorded for content the doc no longer has
        assert reconcile_missing(pool) == 3  # the stale, the no longer empty, the inserted
        assert repair(pool) == {"vectors": 0, "pending": 0, "failures": 0, "superseded": 0}
    finally:
        pool.close()
    ids = [r[0] for r in scratch.execute("SELECT doc_id FROM pending_embeddings")]
    run.run(1, ids)
    [report] = verify(scratch)
    assert all(report[k] == 0 for k in ("missing", "stale", "orphaned", "duplicated",
                                         "pending", "failed")), report
    for table in ("embeddings", "pending_embeddings", "embedding_failures"):
        assert scratch.execute(f"SELECT count(*) FROM {table} "  # noqa: S608
                               "WHERE doc_id = ANY(%s)", ([deleted, pending_deleted],)
                               ).fetchone()[0] == 0


# 5. a huge doc is cut at fetch time


def test_a_huge_doc_is_cut_at_fetch_and_embedded(make_pipeline, scratch, caplog):
    run = make_pipeline()
    limit = 100 * 256  # characters a token may cover × the default version's window
    huge = "word " * 1_000_000  # 5 MB
    buried = " \u00a0\n" * limit + "the words after a long blank run"
    ids = insert(scratch, huge, buried)
    rows = {r["doc_id"]: r for r in run._fetch(run.spec(1), ids)}
    assert len(rows[ids[0]]["content"]) == limit and rows[ids[0]]["hash"] == sha(huge)
    assert rows[ids[1]]["content"] == "the words after a long blank run"
    with caplog.at_level("INFO", logger="pgfleet.embedding.pipeline"):
        run.run(1, ids)
    assert vector_hash(scratch, ids[0]) == sha(huge)
    assert vector_hash(scratch, ids[1]) == sha(buried)
    assert max(len(t) for call in run.engines[1].calls for t in call) <= limit
    assert f"cut docs [{ids[0]}]" in caplog.text


# 6. one definition of blank, for the worker and for verify


def test_blank_means_the_same_to_the_worker_and_to_verify_for_every_code_point(scratch):
    blank_in_sql = {r[0] for r in scratch.execute(
        "SELECT c FROM generate_series(1, 1114111) c "
        "WHERE (c < 55296 OR c > 57343) AND pgfleet_is_blank_v1(chr(c))")}
    assert blank_in_sql == {c for c in range(1, 0x110000) if chr(c).isspace()}
    every = "".join(chr(c) for c in sorted(blank_in_sql))
    assert scratch.execute("SELECT pgfleet_is_blank_v1(%s), pgfleet_is_blank_v1(''), "
                           "pgfleet_is_blank_v1(%s)", (every, every + "x")).fetchone() == (
        True, True, False)


def test_a_doc_of_non_ascii_whitespace_is_empty_for_the_worker_and_for_verify(
        make_pipeline, scratch):
    run = make_pipeline()
    texts = ["\u00a0\u00a0", "\u3000\u2028\u205f", "\x1c\x1f\u0085 ", "\u00a0word\u00a0"]
    ids = insert(scratch, *texts)
    run.run(1, ids)
    assert [failure(scratch, d) for d in ids[:3]] == [("empty content", 1)] * 3
    assert vector_hash(scratch, ids[3]) == sha(texts[3])
    [report] = verify(scratch)
    assert report["failed"] == 3 and report["failed_with_content"] == 0, report
