"""The fleet end to end: real PostgreSQL, real Redis, a real producer and a real worker
process running the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import gc
import hashlib
import json
import time

import numpy as np
import pytest

from tests.conftest import run_cli, wait_until

pytestmark = pytest.mark.integration


def insert(conn, *contents: str) -> list[int]:
    rows = conn.execute("INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id",
                        (list(contents),)).fetchall()
    return [r[0] for r in rows]


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def vector_row(conn, doc_id: int):
    row = conn.execute("SELECT embedding, content_hash FROM embeddings "
                       "WHERE doc_id = %s AND version_id = 1", (doc_id,)).fetchone()
    return (row[0].to_numpy(), row[1]) if row else None


def wait_embedded(conn, doc_ids, timeout_s: float = 60.0, content: dict | None = None):
    """Wait until every doc has a vector (computed from ``content[doc_id]`` when given)."""
    def done():
        rows = conn.execute("SELECT doc_id, content_hash FROM embeddings "
                            "WHERE doc_id = ANY(%s) AND version_id = 1", (list(doc_ids),)
                            ).fetchall()
        hashes = dict(rows)
        if content:
            return all(hashes.get(d) == sha(content[d]) for d in doc_ids)
        return len(hashes) == len(set(doc_ids))
    wait_until(done, timeout_s, message=f"{len(doc_ids)} docs embedded")


def settled(conn) -> bool:
    return conn.execute("SELECT count(*) FROM pending_embeddings").fetchone()[0] == 0


def test_insert_is_embedded_without_anyone_calling_anything(fleet, clean):
    started = time.monotonic()
    [doc_id] = insert(clean, "PostgreSQL stores vectors with pgvector.")
    wait_embedded(clean, [doc_id])
    elapsed = time.monotonic() - started
    vector, digest = vector_row(clean, doc_id)
    assert digest == sha("PostgreSQL stores vectors with pgvector.")
    assert vector.shape == (384,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    assert settled(clean)
    assert elapsed < 10  # generous bound for CI; latency is measured by `pgfleet bench`


def test_content_update_is_reembedded_from_the_new_content(fleet, clean):
    [doc_id] = insert(clean, "The cat sat on the mat.")
    wait_embedded(clean, [doc_id])
    before = vector_row(clean, doc_id)[0]
    clean.execute("UPDATE docs SET content = %s WHERE id = %s",
                  ("Quarterly revenue grew by twelve percent.", doc_id))
    wait_embedded(clean, [doc_id], content={doc_id: "Quarterly revenue grew by twelve percent."})
    after = vector_row(clean, doc_id)[0]
    assert float(np.dot(before, after)) < 0.5


def test_metadata_only_update_makes_no_model_call(fleet, clean):
    [doc_id] = insert(clean, "metadata test document")
    wait_embedded(clean, [doc_id])
    wait_until(lambda: settled(clean))
    logs_before = clean.execute("SELECT count(*) FROM inference_logs").fetchone()[0]
    embedded_at = clean.execute("SELECT embedded_at FROM embeddings WHERE doc_id = %s",
                                (doc_id,)).fetchone()[0]
    clean.execute("UPDATE docs SET metadata = '{\"reviewed\": true}' WHERE id = %s", (doc_id,))
    time.sleep(1.0)
    assert clean.execute("SELECT count(*) FROM inference_logs").fetchone()[0] == logs_before
    assert clean.execute("SELECT embedded_at FROM embeddings WHERE doc_id = %s",
                         (doc_id,)).fetchone()[0] == embedded_at
    assert settled(clean)


def test_delete_leaves_no_vector_and_no_pending_work(fleet, clean):
    ids = insert(clean, "to be deleted soon", "deleted before it is embedded")
    wait_embedded(clean, ids[:1])
    clean.execute("DELETE FROM docs WHERE id = ANY(%s)", (ids,))
    time.sleep(0.5)
    assert clean.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
    assert settled(clean)


def test_duplicate_content_is_served_from_the_cache(fleet, clean):
    text = "Caching avoids computing the same embedding twice."
    [first] = insert(clean, text)
    wait_embedded(clean, [first])
    wait_until(lambda: settled(clean))
    [second] = insert(clean, text)
    wait_embedded(clean, [second])
    log = clean.execute("SELECT batch_size, cache_hits, model_calls FROM inference_logs "
                        "ORDER BY id DESC LIMIT 1").fetchone()
    assert log == (1, 1, 0)
    a, b = vector_row(clean, first)[0], vector_row(clean, second)[0]
    assert np.array_equal(a, b)
    assert clean.execute("SELECT hits FROM model_cache WHERE input_hash = %s",
                         (sha(text),)).fetchone()[0] == 1


def test_docs_inserted_while_the_producer_is_down_are_embedded_after_it_starts(fleet, clean):
    fleet.producer.stop()
    try:
        ids = insert(clean, *[f"written while the producer was down {i}" for i in range(5)])
        time.sleep(1.5)
        assert clean.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
        assert clean.execute("SELECT count(*) FROM pending_embeddings WHERE enqueued_at IS NULL"
                             ).fetchone()[0] == 5
    finally:
        fleet.producer.start()
    wait_embedded(clean, ids)
    wait_until(lambda: settled(clean))


def test_a_thousand_docs_in_one_transaction_are_embedded_in_batches(fleet, clean):
    contents = [f"row {i}: a short record about item number {i * 7 % 1000}" for i in range(1000)]
    with clean.transaction():
        ids = insert(clean, *contents)
    wait_embedded(clean, ids, timeout_s=240)
    wait_until(lambda: settled(clean))
    batches, biggest, docs = clean.execute(
        "SELECT count(*), max(batch_size), sum(batch_size) FROM inference_logs").fetchone()
    assert docs == 1000
    assert biggest > 1 and batches < 100, (batches, biggest)


def test_a_search_for_a_paraphrase_finds_the_right_doc(fleet, clean):
    from pgfleet.corpus import sample_docs

    docs = sample_docs()
    ids = insert(clean, *[d["content"] for d in docs])
    by_text = dict(zip([d["content"] for d in docs], ids, strict=True))
    wait_embedded(clean, ids)
    queries = {
        "how does the database survive a crash": by_text[docs[5]["content"]],
        "what makes bread rise": by_text[docs[25]["content"]],
        "shrinking a model to 8-bit integers": by_text[docs[13]["content"]],
        "tallest iron landmark in Paris": by_text[docs[20]["content"]],
    }
    result = run_cli("search", "--file", "-", "--json", "-k", "3",
                     env=fleet.services.env(), input_text="\n".join(queries))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == list(queries)
    for line in lines:
        assert line["version"] == "all-minilm-l6-v2@v1"
        assert line["hits"][0]["doc_id"] == queries[line["query"]], line
        assert {"doc_id", "score", "content"} <= set(line["hits"][0])


def test_bad_content_is_handled_and_recorded(fleet, clean):
    long_text = " ".join(f"word{i}" for i in range(3000))
    odd = "tabs\tand\x01control\x1fchars, emoji 🚀, RTL שלום, combining é, CJK 漢字"
    ids = insert(clean, "", "   \n\t ", long_text, odd)
    wait_embedded(clean, ids[2:])
    wait_until(lambda: settled(clean))
    failures = clean.execute("SELECT doc_id, reason, attempts FROM embedding_failures "
                             "ORDER BY doc_id").fetchall()
    assert failures == [(ids[0], "empty content", 1), (ids[1], "empty content", 1)]
    wait_until(lambda: f"truncated docs [{ids[2]}]" in fleet.worker.log(), 10,
               message="truncation logged")
    # fixing the content clears the failure and embeds the doc
    clean.execute("UPDATE docs SET content = 'now it has words' WHERE id = %s", (ids[0],))
    wait_embedded(clean, [ids[0]])
    assert clean.execute("SELECT count(*) FROM embedding_failures WHERE doc_id = %s",
                         (ids[0],)).fetchone()[0] == 0


def test_bad_messages_get_a_clear_error_in_their_result_and_never_crash_the_worker(fleet, clean):
    from pgfleet.settings import Settings
    from workers.app import create_app
    from workers.queues import QUEUE_GPU, TASK_EMBED

    [real] = insert(clean, "a real doc next to bad ones")
    wait_embedded(clean, [real])
    app = create_app(Settings(database_url=fleet.services.database_url,
                              redis_url=fleet.services.redis_url))
    sent = {
        "unknown doc": app.send_task(TASK_EMBED, args=(1, [real, 987654321]), queue=QUEUE_GPU),
        "unknown version": app.send_task(TASK_EMBED, args=(424242, [1]), queue=QUEUE_GPU),
        "wrong types": app.send_task(TASK_EMBED, args=("one", "two"), queue=QUEUE_GPU),
        "no arguments": app.send_task(TASK_EMBED, args=(), queue=QUEUE_GPU),
        "fine": app.send_task(TASK_EMBED, args=(1, [real]), queue=QUEUE_GPU),
    }
    expected = {
        "unknown doc": "doc ids [987654321] do not exist",
        "unknown version": "model version 424242 does not exist",
        "wrong types": "version_id must be a positive integer",
        "no arguments": "expected (version_id, doc_ids)",
    }
    for name, result in sent.items():
        result.get(timeout=30, propagate=False)
        if name == "fine":
            assert result.state == "SUCCESS", result.result
            assert result.result["version_id"] == 1
        else:
            assert result.state == "FAILURE", (name, result.result)
            assert expected[name] in str(result.result), (name, result.result)
    # let the results unsubscribe while Redis is still up
    del result
    sent.clear()
    gc.collect()
    app.close()
    log = fleet.worker.log()
    assert "rejected embed message" in log and "do not exist" in log
    [doc_id] = insert(clean, "the worker is still healthy")
    wait_embedded(clean, [doc_id])
    assert fleet.worker.process.poll() is None


def test_two_producers_at_once_publish_each_doc_once(fleet, clean, tmp_path):
    from tests.conftest import Proc

    second = Proc("producer-2", fleet.producer.argv, fleet.producer.env, tmp_path).start()
    try:
        # both listening before the first insert: a producer that starts on a busy machine
        # can take seconds, and one that is not listening yet takes no part
        wait_until(lambda: clean.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfleet-listener' "
            "AND query LIKE 'LISTEN %'").fetchone()[0] == 2, 60, message="both producers listening")
        ids = []
        for i in range(30):  # many small transactions: both producers wake up
            ids += insert(clean, *[f"two producers, round {i}, doc {j}" for j in range(10)])
        wait_embedded(clean, ids, timeout_s=120)
        wait_until(lambda: settled(clean))
    finally:
        second.stop()
    assert "published" in second.log()  # the second producer did take part
    docs = clean.execute("SELECT sum(batch_size) FROM inference_logs").fetchone()[0]
    assert docs == len(ids)  # nothing embedded twice


def test_a_doc_emptied_after_embedding_loses_its_vector(fleet, clean):
    from pgfleet.embedding.search import search_sql
    from pgfleet.embedding.verify import consistent, verify

    [doc] = insert(clean, "a doc about lighthouses that is about to be emptied")
    wait_embedded(clean, [doc])
    old_vector = vector_row(clean, doc)[0]
    clean.execute("UPDATE docs SET content = '   ' WHERE id = %s", (doc,))
    wait_until(lambda: clean.execute("SELECT reason FROM embedding_failures WHERE doc_id = %s",
                                     (doc,)).fetchone() == ("empty content",), 30,
               message="the emptied doc recorded")
    wait_until(lambda: settled(clean))
    assert vector_row(clean, doc) is None
    report = verify(clean)
    assert consistent(report) and report[0]["failed_with_content"] == 0, report
    hits = clean.execute(search_sql(384), {"query": old_vector, "version_id": 1, "k": 5}
                         ).fetchall()
    assert doc not in [h[0] for h in hits]


def test_writes_made_with_triggers_off_are_repaired_by_the_reconciler(fleet, clean):
    from pgfleet.embedding.verify import consistent, verify

    changed, deleted, twice = insert(clean, "the original words of a doc", "a doc soon deleted",
                                     "a doc changed twice")
    wait_embedded(clean, [changed, deleted, twice])
    wait_until(lambda: settled(clean))
    fleet.producer.stop()
    try:
        with clean.transaction():
            # a change the trigger queues, then one it does not see (replication, a restore)
            clean.execute("UPDATE docs SET content = 'changed once' WHERE id = %s", (twice,))
            clean.execute("SET LOCAL session_replication_role = replica")
            clean.execute("UPDATE docs SET content = 'changed with triggers off' "
                          "WHERE id = ANY(%s)", ([changed, twice],))
            clean.execute("DELETE FROM docs WHERE id = %s", (deleted,))
            [added] = [r[0] for r in clean.execute(
                "INSERT INTO docs (content) VALUES ('inserted with triggers off') RETURNING id")]
        assert verify(clean)[0]["orphaned"] == 1
    finally:
        fleet.producer.start()  # it reconciles when it starts
    current = {changed: "changed with triggers off", twice: "changed with triggers off",
               added: "inserted with triggers off"}
    wait_embedded(clean, list(current), content=current)
    wait_until(lambda: settled(clean), 30, message="nothing pending")
    report = verify(clean)
    assert consistent(report), report
