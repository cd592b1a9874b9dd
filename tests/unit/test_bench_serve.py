"""``pgfleet bench serve``'s arithmetic and report, without servers: percentiles and rates,
ratios, the targets, the API's pass sizes, and the closed-loop client against a fake one."""

from __future__ import annotations

import asyncio
import math

import pytest

from pgfleet.ops import bench_serve
from pgfleet.ops.bench_serve import (
    TARGETS,
    check_targets,
    figures,
    parse_clients,
    ratio,
    shaping_settings,
    summarize,
)
from pgfleet.ops.bench_serve_load import closed_loop, cpu_delta, pass_delta, round_trips
from pgfleet.settings import Settings


def test_clients_are_distinct_positive_counts_in_order():
    assert parse_clients("1,16,64") == (1, 16, 64)
    assert parse_clients(" 64, 1,16,16 ") == (1, 16, 64)
    for bad in ("", "0,4", "-1", "a,b", "1;2"):
        with pytest.raises(ValueError):
            parse_clients(bad)


def test_summary_gives_rate_and_percentiles_of_the_window():
    latencies = [float(i) for i in range(1, 101)]   # 1..100 ms
    row = summarize(latencies, 4.0, errors=2)
    assert row["requests"] == 100 and row["errors"] == 2 and row["seconds"] == 4.0
    assert row["requests_per_s"] == 25.0
    # linear interpolation, as numpy's default
    assert row["p50_ms"] == pytest.approx(50.5)
    assert row["p95_ms"] == pytest.approx(95.05)
    assert row["p99_ms"] == pytest.approx(99.01)


def test_summary_of_nothing_and_of_an_untimed_series():
    assert summarize([], 2.0)["p50_ms"] is None
    assert summarize([], 2.0)["requests_per_s"] == 0.0
    # round trips one after the other have no window: no rate, only latencies
    row = summarize([3.0, 5.0], 0)
    assert row["requests_per_s"] is None and row["p50_ms"] == 4.0


def test_ratio_is_none_without_both_figures():
    assert ratio(30.0, 10.0) == 3.0
    assert ratio(2.0, 3.0, 2) == 0.67
    assert ratio(None, 10.0) is None
    assert ratio(10.0, 0.0) is None
    assert ratio(10.0, None) is None


def test_pass_delta_counts_only_the_passes_between_two_reads():
    before = {"1": 10, "4": 2}
    after = {"1": 12, "4": 2, "16": 3}
    delta = pass_delta(before, after)
    assert delta == {"passes": 5, "texts": 2 + 48, "texts_per_pass": 10.0, "largest": 16}
    assert pass_delta(after, after) == {"passes": 0, "texts": 0, "texts_per_pass": None,
                                        "largest": None}


def test_cpu_delta_splits_the_machine_between_the_run_and_the_rest():
    before = ({"api": 10.0, "postgres": 5.0}, 100.0)
    after = ({"api": 13.0, "postgres": 6.5, "bench": 0.5}, 106.0)
    delta = cpu_delta(before, after, 3.0)
    assert delta["cpu_s"] == {"api": 3.0, "postgres": 1.5, "bench": 0.5}
    assert delta["others_cpu_s"] == 1.0 and delta["cores_busy"] == 2.0
    assert cpu_delta(before, before, 0)["cores_busy"] is None


def _report(**over):
    row = {"requests_per_s": 300.0, "p50_ms": 12.0, "p95_ms": 30.0}
    report = {
        "bare": {"search": {"requests_per_s": 80.0},
                 "embeddings": {"best_texts_per_s": 60.0}},
        "http": {"search": {"1": row, "16": {**row, "requests_per_s": 250.0}},
                 "embeddings": {"16": {"requests_per_s": 57.0}}},
        "cache_hit": {"p50_ms": 4.0},
        "backlog": {"with_search": {"search": {"p95_ms": 250.0}},
                    "with_search_over_idle": 0.75},
    }
    report.update(over)
    return report


def test_figures_and_targets_from_a_report():
    values = figures(_report())
    assert values == {"search_16_over_bare": 3.12, "embeddings_16_over_bare": 0.95,
                      "idle_search_p50_ms": 12.0, "idle_search_p95_ms": 30.0,
                      "cache_hit_p50_ms": 4.0, "backlog_search_p95_ms": 250.0,
                      "backlog_with_search_over_idle": 0.75}
    targets = check_targets(values)
    assert set(targets) == set(TARGETS)
    assert all(t["met"] for t in targets.values())
    assert targets["search_16_over_bare"]["target"] == ">= 3"
    assert targets["cache_hit_p50_ms"]["target"] == "<= 5"


def test_a_missed_target_and_one_not_measured():
    report = _report(cache_hit={"p50_ms": 9.0})
    del report["http"]["search"]["16"]          # --clients without 16
    targets = check_targets(figures(report))
    assert targets["cache_hit_p50_ms"] == {"value": 9.0, "target": "<= 5", "met": False}
    assert targets["search_16_over_bare"]["met"] is None
    assert targets["idle_search_p50_ms"]["met"] is True


def test_settings_that_shape_the_figures():
    shown = shaping_settings(Settings(api_max_batch=32, api_max_wait_ms=5.0), 1024)
    assert shown["api_max_batch"] == 32 and shown["api_max_wait_ms"] == 5.0
    assert shown["token_budget"] == 0 and shown["token_budget_effective"] == 1024


class _Response:
    status_code = 200
    text = ""

    def __init__(self, status: int = 200):
        self.status_code = status

    def json(self):
        return {"latency_ms": 1.5, "cache_hit": True}


class _Client:
    """Answers after 5 ms; every fifth request fails when ``failing``."""

    def __init__(self, failing: bool = False):
        self.bodies: list[dict] = []
        self.failing = failing

    async def post(self, path, json):
        self.bodies.append(json)
        await asyncio.sleep(0.005)
        if self.failing and len(self.bodies) % 5 == 0:
            return _Response(500)
        return _Response()


def test_closed_loop_keeps_each_client_busy_and_counts_the_window_only():
    client = _Client()
    samples = asyncio.run(closed_loop(client, "/v1/search", lambda i: {"i": i}, 4,
                                      seconds=0.3, warmup_s=0.1, read_server_ms=True))
    # 4 callers, each one request per ~5 ms: ~240 in 0.3 s (fewer on a busy machine)
    assert 40 <= len(samples.latencies_ms) <= 260
    assert len(client.bodies) > len(samples.latencies_ms)     # the warm-up is not counted
    assert len({b["i"] for b in client.bodies}) == len(client.bodies)   # no body twice
    assert all(ms >= 4.0 for ms in samples.latencies_ms)
    assert samples.server_ms and set(samples.server_ms) == {1.5}
    assert samples.cache_hits == len(samples.latencies_ms)
    assert samples.window_s == pytest.approx(0.3, abs=0.05)


def test_closed_loop_counts_errors_and_keeps_the_first():
    samples = asyncio.run(closed_loop(_Client(failing=True), "/x", lambda i: {}, 2,
                                      seconds=0.2))
    assert samples.errors > 0 and samples.first_error.startswith("HTTP 500")
    assert samples.latencies_ms


def test_closed_loop_until_stopped():
    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(closed_loop(_Client(), "/x", lambda i: {}, 1, stop=stop))
        await asyncio.sleep(0.1)
        stop.set()
        return await task

    samples = asyncio.run(go())
    assert samples.latencies_ms and samples.window_s == pytest.approx(0.1, abs=0.05)


class _Result:
    def __init__(self, log):
        self.log = log

    def get(self, timeout, propagate, disable_sync_subtasks):
        assert propagate is False
        self.log.append("get")

    def forget(self):
        self.log.append("forget")


class _App:
    def __init__(self):
        self.log: list = []

    def send_task(self, name, args, queue, ignore_result):
        assert ignore_result is False   # the caller waits for it
        self.log.append((name, queue))
        return _Result(self.log)


def test_round_trips_wait_for_each_result_in_turn():
    app = _App()
    latencies = round_trips(app, "embed.gpu", count=3, gap_s=0)
    assert len(latencies) == 3 and all(ms >= 0 and math.isfinite(ms) for ms in latencies)
    assert app.log == [("celery.ping", "embed.gpu"), "get", "forget"] * 3


def test_the_module_documents_its_phases():
    assert "celery.ping" in (bench_serve.__doc__ or "")


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
def test_both_load_clients_send_the_key_and_read_status_and_body(kind):
    from aiohttp import web

    from pgfleet.ops.bench_serve_load import http_client

    async def answer(request):
        body = await request.json()
        if request.headers.get("Authorization") != "Bearer pgf_k":
            return web.json_response({"error": "no key"}, status=401)
        return web.json_response({"echo": body, "path": request.path},
                                 status=200 if body.get("ok") else 500)

    async def go():
        app = web.Application()
        app.router.add_post("/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with http_client(f"http://127.0.0.1:{port}", "pgf_k", 2, kind) as client:
                good = await client.post("/v1/search", json={"ok": True})
                bad = await client.post("/v1/search", json={"ok": False})
            async with http_client(f"http://127.0.0.1:{port}", "other", 1, kind) as client:
                refused = await client.post("/v1/search", json={"ok": True})
        finally:
            await runner.cleanup()
        return good, bad, refused

    good, bad, refused = asyncio.run(go())
    assert good.status_code == 200 and good.json() == {"echo": {"ok": True},
                                                       "path": "/v1/search"}
    good.raise_for_status()
    assert bad.status_code == 500 and '"echo"' in bad.text
    with pytest.raises(RuntimeError, match="HTTP 500"):
        bad.raise_for_status()
    assert refused.status_code == 401


def test_an_unknown_load_client_is_refused():
    from pgfleet.ops.bench_serve_load import http_client

    with pytest.raises(ValueError, match="aiohttp, httpx"):
        http_client("http://127.0.0.1:1", "k", 1, "curl")
