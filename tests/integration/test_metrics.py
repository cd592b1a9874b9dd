"""The Prometheus endpoint against the real PostgreSQL: every metric computed at scrape time,
histograms as running totals of inference_logs, the command serving it over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgfleet.ops.metrics import registry
from pgfleet.ops.services import free_port
from tests.conftest import ROOT, run_cli, wait_until

pytestmark = pytest.mark.integration


def scrape(reg) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


V1 = (("model", "all-minilm-l6-v2"), ("version", "v1"))


def v1(**extra: str) -> tuple:
    """v1's labels with others, sorted as ``scrape`` keys them."""
    return tuple(sorted((*V1, *extra.items())))


def log_batches(conn, *rows: tuple[int, float, int], age_s: float = 60.0,
                task: str = "embed") -> None:
    """inference_logs rows (batch size, latency ms, cache hits) for v1, ``age_s`` old."""
    for batch_size, latency_ms, hits in rows:
        conn.execute(
            "INSERT INTO inference_logs (version_id, task, latency_ms, batch_size, cache_hits, "
            "model_calls, created_at) VALUES (1, %s, %s, %s, %s, %s, "
            "now() - make_interval(secs => %s))",
            (task, latency_ms, batch_size, hits, batch_size - hits, age_s))


@pytest.fixture
def fleet_state(scratch):
    """Four docs (two embedded, two pending), a failure, cache entries, training runs."""
    ids = [r[0] for r in scratch.execute(
        "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id",
        (["a", "b", "c", "d"],)).fetchall()]
    scratch.execute("UPDATE pending_embeddings SET queued_at = now() - interval '90 seconds' "
                    "WHERE doc_id = %s", (ids[2],))
    for doc_id in ids[:2]:
        scratch.execute("DELETE FROM pending_embeddings WHERE doc_id = %s", (doc_id,))
        scratch.execute("INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) "
                        "VALUES (%s, 1, array_fill(0.1, ARRAY[384])::vector, '\\x00')", (doc_id,))
    scratch.execute("INSERT INTO embedding_failures (doc_id, version_id, reason) "
                    "VALUES (%s, 1, 'model error')", (ids[3],))
    scratch.execute("INSERT INTO model_cache (version_id, input_hash, embedding) "
                    "VALUES (1, '\\x01', '[1,2,3]'), (1, '\\x02', '[1,2,3]')")
    scratch.execute("DELETE FROM training_runs")
    scratch.execute("INSERT INTO training_runs (task, status) VALUES "
                    "('quantize', 'succeeded'), ('quantize', 'succeeded'), "
                    "('train_embeddings', 'running')")
    yield ids
    scratch.execute("DELETE FROM training_runs")


def test_gauges_are_read_from_the_database_at_scrape_time(scratch, scratch_url, fleet_state):
    reg = registry(scratch_url)
    m = scrape(reg)
    assert m[("pgfleet_database_up", ())] == 1
    assert m[("pgfleet_docs", ())] == 4
    assert m[("pgfleet_embedded_docs", V1)] == 2
    assert m[("pgfleet_coverage_ratio", V1)] == 0.5
    assert m[("pgfleet_pending_docs", V1)] == 2
    assert 89 <= m[("pgfleet_oldest_pending_age_seconds", V1)] < 150
    assert m[("pgfleet_version_active", V1)] == 1
    assert m[("pgfleet_failed_docs", v1(reason="model error"))] == 1
    assert m[("pgfleet_cache_entries", V1)] == 2
    assert m[("pgfleet_cache_size_bytes", ())] > 0
    runs = {labels: v for (name, labels), v in m.items() if name == "pgfleet_training_runs"}
    assert runs[(("status", "succeeded"), ("task", "quantize"))] == 2
    assert runs[(("status", "running"), ("task", "train_embeddings"))] == 1
    assert runs[(("status", "failed"), ("task", "quantize"))] == 0
    assert all(name.startswith("pgfleet_") for name, _ in m)
    # the next scrape sees the change
    scratch.execute("DELETE FROM pending_embeddings")
    m = scrape(reg)
    assert m[("pgfleet_pending_docs", V1)] == 0
    assert m[("pgfleet_oldest_pending_age_seconds", V1)] == 0


def test_batch_histograms_are_running_totals_of_inference_logs(scratch, scratch_url):
    log_batches(scratch, (64, 30.0, 0), (64, 400.0, 10), (3, 7.0, 3))
    log_batches(scratch, (1, 2.0, 1), task="search")
    reg = registry(scratch_url, settle_s=2.0)
    m = scrape(reg)
    assert m[("pgfleet_embed_batch_size_count", V1)] == 3
    assert m[("pgfleet_embed_batch_size_sum", V1)] == 131
    assert m[("pgfleet_embed_batch_size_bucket", v1(le="4.0"))] == 1
    assert m[("pgfleet_embed_batch_size_bucket", v1(le="64.0"))] == 3
    assert m[("pgfleet_embed_batch_latency_seconds_bucket", v1(le="0.01"))] == 1
    assert m[("pgfleet_embed_batch_latency_seconds_bucket", v1(le="0.05"))] == 2
    assert m[("pgfleet_embed_batch_latency_seconds_bucket", v1(le="+Inf"))] == 3
    assert m[("pgfleet_embed_batch_latency_seconds_sum", V1)] == pytest.approx(0.437)
    assert m[("pgfleet_cache_hits_total", V1)] == 14
    assert m[("pgfleet_cache_lookups_total", V1)] == 132
    assert m[("pgfleet_cache_hit_ratio", V1)] == pytest.approx(14 / 132)
    # a new batch counts once its transaction began settle_s ago, and only once
    log_batches(scratch, (8, 20.0, 0), age_s=0)
    assert scrape(reg)[("pgfleet_embed_batch_size_count", V1)] == 3
    time.sleep(2.2)
    m = scrape(reg)
    assert m[("pgfleet_embed_batch_size_count", V1)] == 4
    assert m[("pgfleet_embed_batch_size_sum", V1)] == 139
    assert scrape(reg)[("pgfleet_embed_batch_size_sum", V1)] == 139
    # another process serving the endpoint reports the same totals
    assert scrape(registry(scratch_url, settle_s=2.0))[("pgfleet_embed_batch_size_sum", V1)] == 139


def test_an_unreachable_database_is_reported_not_raised(services):
    url = services.database_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/pgfleet"
    m = scrape(registry(url))
    assert m[("pgfleet_database_up", ())] == 0


def test_the_command_prints_once_and_serves_over_http(services, scratch, scratch_url,
                                                     fleet_state, tmp_path):
    env = services.env(PGFLEET_DATABASE_URL=scratch_url)
    once = run_cli("metrics", "--once", env=env)
    assert once.returncode == 0, once.stderr
    assert 'pgfleet_pending_docs{model="all-minilm-l6-v2",version="v1"} 2.0' in once.stdout
    port = free_port()
    log = open(tmp_path / "metrics.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "metrics", f"--port={port}"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        def get():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return None
        body = wait_until(get, 30, interval_s=0.2, message="the metrics endpoint")
        assert "pgfleet_coverage_ratio" in body and "pgfleet_database_up 1.0" in body
        # the same port twice: one clear line
        again = run_cli("metrics", f"--port={port}", env=env, timeout_s=30)
        assert again.returncode == 2 and "cannot listen on 127.0.0.1" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert "Traceback" not in (tmp_path / "metrics.log").read_text()


def test_an_unreachable_database_fails_the_one_shot_print(services, tmp_path):
    url = services.database_url.rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/pgfleet"
    result = run_cli("metrics", "--once", env=services.env(PGFLEET_DATABASE_URL=url))
    assert result.returncode == 1
    assert "pgfleet_database_up 0.0" in result.stdout
    assert "pgfleet: metrics incomplete: cannot connect to PostgreSQL" in result.stderr
