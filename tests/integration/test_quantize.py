"""The CPU INT8 queue: quantize the packaged MiniLM, check its fidelity, and embed docs for
the INT8 version through a real CPU-queue worker."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pgfleet import db
from tests.conftest import Proc, run_cli, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def int8(services, tmp_path_factory):
    """An INT8 version quantized from v1, registered (inactive) in the test database."""
    from pgfleet.settings import Settings
    from pgfleet.training.jobs import run_quantize

    settings = Settings(home=tmp_path_factory.mktemp("models-home"))
    from tests.conftest import reset_database

    with db.connect(services.database_url, autocommit=True) as conn:
        reset_database(conn)
        result = run_quantize(conn, settings, "v1", sample_size=100, run_id=1)
    yield result
    with db.connect(services.database_url, autocommit=True) as conn:
        reset_database(conn)


@pytest.fixture(scope="module")
def cpu_worker(fleet, tmp_path_factory):
    from pgfleet.ops.supervisor import fleet_children

    spec = next(s for s in fleet_children(flower_port=None) if s.name == "worker-cpu")
    proc = Proc("worker-cpu", spec.argv, fleet.producer.env, tmp_path_factory.mktemp("cpu-logs"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def docs_only(conn):
    conn.execute("TRUNCATE docs, model_cache, inference_logs RESTART IDENTITY CASCADE")
    return conn


def test_quantized_model_is_small_and_faithful(int8):
    m = int8["metrics"]
    assert int8["format"] == "onnx-int8" and int8["version"] == "v1-int8"
    assert m["file_bytes"]["int8_to_fp32"] <= 0.30, m["file_bytes"]
    assert m["fidelity_int8"]["cosine_mean"] >= 0.99, m["fidelity_int8"]
    assert m["fidelity_int8"]["top10_overlap"] >= 0.90, m["fidelity_int8"]
    assert m["fidelity_onnx_fp32"]["cosine_min"] >= 0.9999  # the export itself is exact
    for engine in ("torch_fp32", "onnx_fp32", "onnx_int8"):
        row = m["docs_per_s"][engine]
        assert row["batch1_docs_per_s"] > 0 and row["best_docs_per_s"] > 0
    assert m["quantization"]["per_channel"] is True
    assert m["sample"]["docs"] == 100


def test_models_lists_versions_with_their_figures(services, int8, conn):
    result = run_cli("models", "--json", env=services.env())
    assert result.returncode == 0, result.stderr
    rows = {r["version"]: r for r in json.loads(result.stdout)}
    assert rows["v1-int8"]["format"] == "onnx-int8" and rows["v1-int8"]["parent"] == \
        "all-minilm-l6-v2@v1"
    assert rows["v1-int8"]["metrics"]["fidelity_int8"]["cosine_mean"] >= 0.99
    assert rows["v1"]["status"] == "ready" and rows["v1"]["active"] is True


def test_docs_for_an_int8_version_are_embedded_through_the_cpu_queue(
        services, int8, cpu_worker, docs_only):
    conn = docs_only
    conn.execute("UPDATE model_versions SET active = true WHERE id = %s", (int8["version_id"],))
    try:
        texts = ["Quantized models run faster on CPUs.", "The cat sleeps on the sofa.",
                 "PostgreSQL replays its write-ahead log after a crash."]
        ids = [r[0] for r in conn.execute(
            "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (texts,))]
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)", (ids,)).fetchone()[0] == 6,
            90, message="vectors for both versions")
        assert "version=all-minilm-l6-v2@v1-int8 docs=" in cpu_worker.log()
        vectors = {(r[0], r[1]): r[2].to_numpy() for r in conn.execute(
            "SELECT doc_id, version_id, embedding FROM embeddings")}
        for doc_id in ids:
            a, b = vectors[(doc_id, 1)], vectors[(doc_id, int8["version_id"])]
            assert float(np.dot(a, b)) > 0.97
        search = run_cli("search", "how does a database recover from a crash", "--version",
                         "v1-int8", "--json", "-k", "1", env=services.env())
        assert search.returncode == 0, search.stderr
        answer = json.loads(search.stdout)
        assert answer["version"] == "all-minilm-l6-v2@v1-int8"
        assert answer["hits"][0]["doc_id"] == ids[2]
    finally:
        conn.execute("UPDATE model_versions SET active = false WHERE id = %s",
                     (int8["version_id"],))


@pytest.mark.parametrize("damage, message", [
    ("missing", "no model_int8.onnx and pgfleet_onnx.json"),
    ("corrupt", "cannot load"),
])
def test_a_corrupt_or_missing_onnx_file_gives_a_clear_error(
        services, int8, cpu_worker, docs_only, tmp_path, damage, message):
    conn = docs_only
    broken = tmp_path / "broken"
    shutil.copytree(int8["artifact"], broken)
    if damage == "missing":
        (broken / "model_int8.onnx").unlink()
    else:
        (broken / "model_int8.onnx").write_bytes(b"this is not an onnx model")
    version_id = conn.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions, active)"
        " VALUES ('all-minilm-l6-v2', %s, 'embedding', 'onnx-int8', %s, 384, true) RETURNING id",
        (f"broken-{damage}", str(broken))).fetchone()[0]
    try:
        [doc_id] = [r[0] for r in conn.execute(
            "INSERT INTO docs (content) VALUES ('needs the broken model') RETURNING id")]
        wait_until(lambda: conn.execute(
            "SELECT attempts FROM embedding_failures WHERE doc_id = %s AND version_id = %s",
            (doc_id, version_id)).fetchone() == (5,), 60, message="failure recorded")
        reason, error = conn.execute(
            "SELECT reason, last_error FROM embedding_failures WHERE version_id = %s",
            (version_id,)).fetchone()
        assert reason == "model unavailable"
        assert f"all-minilm-l6-v2@broken-{damage}" in error and message in error, error
    finally:
        conn.execute("DELETE FROM model_versions WHERE id = %s", (version_id,))
