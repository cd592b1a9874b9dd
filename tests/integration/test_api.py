"""The HTTP API as applications use it: a real ``pgfleet serve`` process, the real database,
the real model, the official ``openai`` client."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid

import numpy as np
import pytest

from tests.conftest import run_cli, wait_until

pytestmark = pytest.mark.integration

DOCS = ["VACUUM reclaims storage occupied by dead tuples in PostgreSQL tables.",
        "Redis keeps its whole dataset in memory and persists it with snapshots.",
        "An HNSW index answers approximate nearest neighbour queries over vectors."]


def _embedded(conn, contents: list[str]) -> dict[str, int]:
    ids = {}
    for content in contents:
        ids[content] = conn.execute("INSERT INTO docs (content) VALUES (%s) RETURNING id",
                                    (content,)).fetchone()[0]
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)",
        (list(ids.values()),)).fetchone()[0] == len(ids), 60, message="docs embedded")
    return ids


def test_every_v1_endpoint_needs_a_live_key_and_healthz_none(api, conn):
    from pgfleet.api import keys

    assert api.get("/healthz", key="").status_code == 200
    # the OpenAPI docs need no key and load nothing from another site
    docs = api.get("/docs", key="")
    assert docs.status_code == 200 and "https://" not in docs.text
    assert "/v1/embeddings" in api.get("/openapi.json", key="").json()["paths"]
    # what cannot be a key (a wrong prefix, or over 128 characters) is refused unlooked-up
    for key in ("", "pgf_not-a-key", "Basic abc", "pgf_" + "A" * 5000, "' OR 1=1 --"):
        response = api.get("/v1/models", key=key)
        assert response.status_code == 401, (key, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    conn.execute("DELETE FROM api_keys WHERE name = 'short-lived'")
    key = keys.create(conn, "short-lived")
    assert api.get("/v1/models", key=key).status_code == 200
    run = run_cli("api-key", "revoke", "short-lived", env=api.proc.env)
    assert run.returncode == 0, run.stderr
    # a key found live is trusted for KEY_TTL_S (1 s) without asking the database
    wait_until(lambda: api.get("/v1/models", key=key).status_code == 401, 3,
               message="the revoked key refused")
    again = run_cli("api-key", "revoke", "short-lived", env=api.proc.env)
    assert again.returncode == 1 and "revoked already" in again.stderr


def test_api_key_create_prints_the_key_alone_on_its_last_line_and_stores_only_a_hash(api, conn):
    conn.execute("DELETE FROM api_keys WHERE name = 'from-cli'")
    run = run_cli("api-key", "create", "from-cli", env=api.proc.env)
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip().splitlines()[-1]
    assert key.startswith("pgf_") and " " not in key
    assert api.get("/v1/models", key=key).status_code == 200
    stored = conn.execute("SELECT key_hash, prefix, last_used_at FROM api_keys "
                          "WHERE name = 'from-cli'").fetchone()
    assert key.encode() not in bytes(stored[0]) and len(stored[1]) < 12
    assert stored[2] is not None   # when it was last used
    listing = run_cli("api-key", "list", "--json", env=api.proc.env)
    assert key not in listing.stdout and "from-cli" in listing.stdout
    taken = run_cli("api-key", "create", "from-cli", env=api.proc.env)
    assert taken.returncode == 1 and "exists already" in taken.stderr
    bad = run_cli("api-key", "create", "no spaces", env=api.proc.env)
    assert bad.returncode == 1 and "name" in bad.stderr


def test_search_answers_as_the_command_line_does_routed_cached_and_logged(api, fleet, clean):
    _embedded(clean, DOCS)
    response = api.post("/v1/search", {"query": "how is dead space reclaimed", "k": 2,
                                       "key": "user-1"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["version"] == answer["assigned_version"] == "all-minilm-l6-v2@v1"
    assert answer["hits"][0]["content"] == DOCS[0] and len(answer["hits"]) == 2
    assert set(answer["hits"][0]) == {"doc_id", "score", "content", "metadata"}
    assert answer["cache_hit"] is False and answer["latency_ms"] > 0
    logged = clean.execute("SELECT task, version_id, results FROM inference_logs WHERE id = %s",
                           (answer["log_id"],)).fetchone()
    assert logged == ("search", 1, [h["doc_id"] for h in answer["hits"]])
    second = api.post("/v1/search", {"query": "how is dead space reclaimed", "k": 2}).json()
    assert second["cache_hit"] is True and second["hits"] == answer["hits"]
    # the hit is counted on the cache entry (its eviction rank) and in the search's log row
    digest = hashlib.sha256(b"how is dead space reclaimed").digest()
    entry = clean.execute("SELECT hits, last_hit_at IS NOT NULL FROM model_cache "
                          "WHERE version_id = 1 AND input_hash = %s", (digest,)).fetchone()
    assert entry == (1, True)
    assert clean.execute("SELECT cache_hits, model_calls FROM inference_logs WHERE id = %s",
                         (second["log_id"],)).fetchone() == (1, 0)

    # the command line: in-process without an API, through it when one is configured
    query = "which store keeps data in memory"
    alone = run_cli("search", query, "-k", "2", "--json", env=fleet.services.env())
    through = run_cli("search", query, "-k", "2", "--json",
                      env=fleet.services.env(PGFLEET_API_URL=api.url, PGFLEET_API_KEY=api.key))
    assert alone.returncode == 0 and through.returncode == 0, (alone.stderr, through.stderr)
    first, via_api = json.loads(alone.stdout), json.loads(through.stdout)
    assert [h["doc_id"] for h in first["hits"]] == [h["doc_id"] for h in via_api["hits"]]
    assert via_api["hits"][0]["content"] == DOCS[1]
    assert via_api["cache_hit"] is True      # the in-process run cached the query vector


def test_the_openai_client_gets_the_fleets_vectors(api, fleet, clean):
    import openai

    ids = _embedded(clean, DOCS)
    # closed at the end: its connection pool would otherwise be left to the garbage collector
    with openai.OpenAI(base_url=api.url + "/v1", api_key=api.key) as client:
        # the client asks for base64 by default; float too
        default = client.embeddings.create(model="all-minilm-l6-v2", input=DOCS)
        floats = client.embeddings.create(model="v1", input=DOCS[0], encoding_format="float")
        assert default.model == floats.model == "all-minilm-l6-v2@v1"
        assert [d.index for d in default.data] == [0, 1, 2]
        assert default.usage.prompt_tokens == default.usage.total_tokens > len(DOCS) * 5
        for content, item in zip(DOCS, default.data, strict=True):
            stored = clean.execute("SELECT embedding FROM embeddings WHERE doc_id = %s",
                                   (ids[content],)).fetchone()[0]
            assert np.allclose(np.asarray(item.embedding, dtype=np.float32), stored.to_numpy(),
                               atol=1e-5)
        assert np.allclose(floats.data[0].embedding, default.data[0].embedding, atol=1e-6)

        raw = api.post("/v1/embeddings", {"model": "v1", "input": "x", "encoding_format": "base64"})
        vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
        assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4

        with pytest.raises(openai.NotFoundError, match="no embedding version"):
            client.embeddings.create(model="no-such-model", input="x")
        with pytest.raises(openai.UnprocessableEntityError, match="token ids"):
            client.embeddings.create(model="v1", input=[[101, 2023, 102]])
        with pytest.raises(openai.UnprocessableEntityError, match="384-dimensional"):
            client.embeddings.create(model="v1", input="x", dimensions=128)


def test_a_torch_version_is_served_on_the_cpu_by_its_checked_onnx_copy(api, fleet, clean):
    from pgfleet.api.onnx_copy import cache_root

    def runtime():
        engines = api.get("/healthz").json()["engines"]
        return engines and engines[0]["runtime"] == "onnxruntime"

    wait_until(runtime, 180, interval_s=0.5, message="the ONNX copy in service")
    assert any(cache_root().glob("all-minilm-l6-v2-v1-*/model.onnx"))
    ids = _embedded(clean, DOCS)
    served = api.post("/v1/embeddings", {"model": "v1", "input": DOCS,
                                         "encoding_format": "float"}).json()["data"]
    for content, item in zip(DOCS, served, strict=True):
        stored = clean.execute("SELECT embedding FROM embeddings WHERE doc_id = %s",
                               (ids[content],)).fetchone()[0]   # written by torch
        assert np.allclose(item["embedding"], stored.to_numpy(), atol=1e-5)


def test_a_search_returns_k_hits_past_the_hnsw_default_and_back(api, fleet, clean, services):
    """The API's connections keep hnsw.ef_search for their session (one round trip per
    search): a search for more hits than the default 40 gets them all, and a later search
    on the same connection for fewer gets its k."""
    from pgfleet import db
    from pgfleet.embedding.search import nearest, search_sql
    from pgfleet.models import versions

    ids = _embedded(clean, [f"note {i}: the autovacuum daemon and dead tuples, case {i}"
                            for i in range(48)])
    spec = versions.embedding_version(clean, None)
    vector = clean.execute("SELECT embedding FROM embeddings WHERE doc_id = %s",
                           (next(iter(ids.values())),)).fetchone()[0]
    # an autocommit connection, as the API's pool holds; on a table this small the planner
    # sorts all the vectors (exact) unless it may not sort, and only the HNSW index (which a
    # large table gets) is bounded by ef_search
    with db.connect(services.database_url, autocommit=True) as conn:
        conn.execute("SET enable_sort = off")
        with conn.transaction():   # the precondition that lets this test fail
            conn.execute("SET LOCAL hnsw.ef_search = 10")
            bounded = conn.execute(search_sql(spec.dimensions),
                                   {"query": vector, "version_id": spec.version_id,
                                    "k": 48}).fetchall()
        assert len(bounded) == 10
        for k in (48, 3, 45, 48, 1):
            assert len(nearest(conn, spec, vector, k)) == k, k
    for k in (48, 3):
        hits = api.post("/v1/search", {"query": f"dead tuples {k}", "k": k}).json()["hits"]
        assert len(hits) == k, (k, len(hits))


def test_bad_requests_get_413_and_422_naming_the_field(api):
    big = api.post("/v1/search", {"query": "x" * 1_100_000})
    assert big.status_code == 413, big.text
    assert "PGFLEET_API_MAX_BODY_BYTES" in big.json()["error"]["message"]
    def chunks():
        yield b'{"query": "'
        for _ in range(300):
            yield b"x" * 4096
        yield b'"}'

    streamed = api.request("POST", "/v1/search", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert "PGFLEET_API_MAX_BODY_BYTES" in streamed.json()["error"]["message"]
    broken = api.request("POST", "/v1/search", content=b'{"query": ',
                         headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["error"]["message"]
    cases = [({"query": "x", "k": "ten"}, "k"), ({"query": "x", "colour": 1}, "colour"),
             ({"k": 3}, "query"), ({"query": "   "}, "query")]
    for body, field in cases:
        response = api.post("/v1/search", body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["param"] == field, response.json()
    many = api.post("/v1/embeddings", {"model": "v1", "input": ["x"] * 257})
    assert many.status_code == 422 and "PGFLEET_API_MAX_INPUTS" in many.text
    empty = api.post("/v1/embeddings", {"model": "v1", "input": []})
    assert empty.status_code == 422 and empty.json()["error"]["param"] == "input"


def test_concurrent_callers_share_forward_passes(api):
    def passes() -> dict[int, int]:
        engines = api.get("/healthz").json()["engines"]
        return {int(k): v for k, v in engines[0]["passes"].items()} if engines else {}

    before = passes()
    nonce = uuid.uuid4().hex   # texts no earlier run cached
    texts = [f"paragraph {i} {nonce}: " + "a sentence about concurrency and batching. " * 8
             for i in range(16)]
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def call(text: str) -> None:
        barrier.wait()
        statuses.append(api.post("/v1/embeddings", {"model": "v1", "input": text}).status_code)

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 16
    after = passes()
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    texts_encoded = sum(size * count for size, count in new.items())
    assert texts_encoded == 16
    assert sum(new.values()) < 16 and max(s for s, c in new.items() if c) > 1, new


def test_feedback_models_metrics_and_no_key_in_the_log(api, fleet, clean):
    _embedded(clean, DOCS[:1])
    answer = api.post("/v1/search", {"query": "vacuum", "k": 1}).json()
    recorded = api.post("/v1/feedback", {"log_id": answer["log_id"],
                                         "doc_id": answer["hits"][0]["doc_id"]})
    assert recorded.status_code == 200, recorded.text
    assert clean.execute("SELECT count(*) FROM search_feedback WHERE log_id = %s",
                         (answer["log_id"],)).fetchone()[0] == 1
    unknown = api.post("/v1/feedback", {"log_id": 10**9, "doc_id": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "log_id"

    models = api.get("/v1/models").json()["data"]
    ids = {m["id"] for m in models}
    assert {"all-minilm-l6-v2@v1", "all-minilm-l6-v2"} <= ids
    no_sql = api.post("/v1/sql", {"question": "how many docs are there?"})
    assert no_sql.status_code == 404 and "text2sql" in no_sql.json()["error"]["message"]

    metrics = api.get("/metrics", key="").text
    assert 'pgfleet_api_requests_total{endpoint="/v1/search",method="POST",status="200"}' \
        in metrics
    assert 'pgfleet_api_request_duration_seconds_bucket{endpoint="/v1/feedback"' in metrics
    assert "pgfleet_api_pass_texts_count" in metrics
    assert api.key not in api.proc.log()
