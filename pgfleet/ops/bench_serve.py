"""``pgfleet bench serve``: the HTTP API against the bare engine, side by side, on this machine.

It starts its own embedded servers (unless ``PGFLEET_DATABASE_URL``/``PGFLEET_REDIS_URL``
are set), the fleet's producer and torch worker and ``pgfleet serve``, as ``pgfleet up``
does, then:

1. **backlog, API idle**: ``docs`` paragraphs inserted in one transaction and timed until
   every doc has a vector (docs/s), while ``celery.ping`` round trips to the worker's queue
   are timed one after the other: a query sent through the broker instead of answered in
   the API's process. They become the corpus that the searches below search;
2. **broker, idle**: the same round trips with nothing queued;
3. **bare engine** in this process: short queries one at a time (encode + the fleet's
   pgvector query), and the paragraphs encoded in batches of a few sizes (the best is the
   reference for the embeddings endpoint);
4. **HTTP**: closed-loop clients for ``seconds`` at each of ``clients``: short unique
   queries to ``/v1/search`` (k=10), one paragraph per ``/v1/embeddings`` request
   (base64, as OpenAI's client asks); then one query repeated (cache hits);
5. **backlog, one search client**: the database reset, the same number of new paragraphs
   inserted, and one closed-loop search client until they are all embedded: the backlog's
   docs/s against step 1's, and the searches' latency meanwhile.

Every query and paragraph is unique to the run (a prefix), so that no cache helps except
where measured. The API's resident memory is read at the start and end of every phase.
:mod:`pgfleet.ops.bench_serve_load` holds the processes, clients and timings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from pgfleet import db
from pgfleet.models import stats
from pgfleet.ops.bench import machine
from pgfleet.ops.bench_measure import bench_home, fleet_backlog, reset, warm
from pgfleet.ops.bench_serve_load import (
    Pinger,
    Run,
    Samples,
    ServeBenchConfig,
    ServeFleet,
    bare_embeddings,
    bare_search,
    closed_loop,
    http_client,
    texts_for,
)
from pgfleet.settings import Settings

#: the bare engine's batch sizes for the embeddings reference (the best is taken)
BARE_BATCH_SIZES = (8, 16, 32, 64)
#: paragraphs the bare engine encodes at each batch size
BARE_TEXTS = 192

#: (figure, comparison, bound): what the API is meant to reach
TARGETS: dict[str, tuple[str, float]] = {
    "search_16_over_bare": (">=", 3.0),
    "embeddings_16_over_bare": (">=", 0.9),
    "idle_search_p50_ms": ("<=", 20.0),
    "idle_search_p95_ms": ("<=", 40.0),
    "cache_hit_p50_ms": ("<=", 5.0),
    "backlog_search_p95_ms": ("<=", 300.0),
    "backlog_with_search_over_idle": (">=", 0.7),
}


# ----------------------------------------------------------------------------- pure
def parse_clients(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` as (1, 16, 64): distinct positive counts, in order."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--clients takes counts separated by commas, not {text!r}") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--clients takes positive counts, not {text!r}")
    return tuple(counts)


def summarize(latencies_ms: list[float], window_s: float, errors: int = 0) -> dict[str, Any]:
    """Requests/s over the window and the latency percentiles of the answers in it."""
    def pct(q: float) -> float | None:
        return round(stats.percentile(latencies_ms, q), 2) if latencies_ms else None

    return {"requests": len(latencies_ms), "errors": errors, "seconds": round(window_s, 2),
            "requests_per_s": round(len(latencies_ms) / window_s, 1) if window_s > 0 else None,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def figures(result: dict[str, Any]) -> dict[str, float | None]:
    """The figures the targets are about, from the report."""
    http, bare, backlog = result["http"], result["bare"], result["backlog"]

    def at(endpoint: str, clients: int, key: str) -> float | None:
        row = http.get(endpoint, {}).get(str(clients))
        return row.get(key) if row else None

    return {
        "search_16_over_bare": ratio(at("search", 16, "requests_per_s"),
                                     bare["search"]["requests_per_s"], 2),
        "embeddings_16_over_bare": ratio(at("embeddings", 16, "requests_per_s"),
                                         bare["embeddings"]["best_texts_per_s"]),
        "idle_search_p50_ms": at("search", 1, "p50_ms"),
        "idle_search_p95_ms": at("search", 1, "p95_ms"),
        "cache_hit_p50_ms": result["cache_hit"]["p50_ms"],
        "backlog_search_p95_ms": backlog["with_search"]["search"]["p95_ms"],
        "backlog_with_search_over_idle": backlog["with_search_over_idle"],
    }


def check_targets(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each target with the figure measured and whether it is met (None: not measured)."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = values.get(name)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    return out


def shaping_settings(conf: Settings, token_budget: int) -> dict[str, Any]:
    """The settings that shape the figures (token_budget: the engine's, after auto)."""
    return {"api_max_batch": conf.api_max_batch, "api_max_wait_ms": conf.api_max_wait_ms,
            "api_threads": conf.api_threads, "torch_threads": conf.torch_threads,
            "token_budget": conf.token_budget, "token_budget_effective": token_budget,
            "batch_max_docs": conf.batch_max_docs, "batch_max_wait_ms": conf.batch_max_wait_ms,
            "device": conf.device}


# ----------------------------------------------------------------------------- the run
def _described(samples: Samples) -> dict[str, Any]:
    row = summarize(samples.latencies_ms, samples.window_s, samples.errors)
    if samples.server_ms:
        row["server_p50_ms"] = round(stats.percentile(samples.server_ms, 50), 2)
        row["cache_hits"] = samples.cache_hits
    if samples.first_error:
        row["first_error"] = samples.first_error
    return row


def _backlog_idle(run: Run, result: dict[str, Any]) -> None:
    from workers.queues import QUEUE_GPU

    pinger = Pinger(run.celery, QUEUE_GPU)
    pinger.start()
    try:
        rate = fleet_backlog(run.conn, run.backlog_texts("idle"), run.config.timeout_s)
    finally:
        during = pinger.finish()
    result["backlog"]["idle"] = {"docs_per_s": round(rate, 1), "load": "none"}
    # few, one after the other: the first waits behind the whole queued backlog
    result["broker"]["ping_backlog"] = {**summarize(during, 0),
                                        "samples_ms": [round(ms, 1) for ms in during]}


def _bare(run: Run, conf: Settings, result: dict[str, Any]) -> int:
    from pgfleet.embedding.engines import load_for
    from pgfleet.models import versions

    spec = versions.embedding_version(run.conn, None)
    engine = load_for(spec, conf)
    queries = [run.query(-1 - i) for i in range(500)]
    bare_search(run.conn, engine, spec, queries[:10], run.config.k, 0.5)  # warm-up
    latencies, elapsed = bare_search(run.conn, engine, spec, queries, run.config.k,
                                     run.config.seconds)
    result["bare"]["search"] = summarize(latencies, elapsed)
    by_batch = bare_embeddings(engine, [run.paragraph(-1 - i) for i in range(BARE_TEXTS)],
                               BARE_BATCH_SIZES)
    best = max(by_batch, key=lambda size: by_batch[size])
    result["bare"]["embeddings"] = {
        "texts": BARE_TEXTS, "best_texts_per_s": round(by_batch[best], 1), "best_batch": best,
        "texts_per_s_by_batch": {str(k): round(v, 1) for k, v in by_batch.items()}}
    return int(getattr(engine, "token_budget", 0))


async def _http(run: Run, result: dict[str, Any]) -> None:
    cfg = run.config
    for endpoint in ("search", "embeddings"):
        rows = result["http"][endpoint] = {}
        for clients in cfg.clients:
            name = f"{endpoint}@{clients}"
            with run.measured(name):
                samples = await run.load(endpoint, clients, seconds=cfg.seconds,
                                         warmup_s=cfg.warmup_s)
            rows[str(clients)] = {**_described(samples), "passes": run.passes[name],
                                  "cpu": run.cpu[name]}
    # a cache hit: one query, asked once to cache its vector, then again and again
    query = {"query": run.query(-10_000_000), "k": cfg.k}
    with run.measured("cache_hit"):
        async with http_client(run.fleet.url, run.fleet.key, 1, cfg.client) as client:
            (await client.post("/v1/search", json=query)).raise_for_status()
            samples = await closed_loop(client, "/v1/search", lambda _i: query, 1,
                                        seconds=max(2.0, cfg.seconds / 4),
                                        read_server_ms=True)
    result["cache_hit"] = _described(samples)


async def _backlog_with_search(run: Run, result: dict[str, Any]) -> None:
    texts = run.backlog_texts("loaded")
    stop = asyncio.Event()
    searching = asyncio.create_task(run.load("search", 1, stop=stop))
    try:
        rate = await asyncio.to_thread(fleet_backlog, run.conn, texts, run.config.timeout_s)
    finally:
        stop.set()
        samples = await searching
    idle = result["backlog"]["idle"]["docs_per_s"]
    result["backlog"]["with_search"] = {"docs_per_s": round(rate, 1),
                                        "load": "1 closed-loop search client",
                                        "search": _described(samples)}
    result["backlog"]["with_search_over_idle"] = ratio(rate, idle)


def _phases(run: Run, conf: Settings, result: dict[str, Any]) -> None:
    from workers.queues import TASK_EMBED

    warm(run.conn, run.salt)
    reset(run.conn)
    run.phase("backlog_idle", lambda: _backlog_idle(run, result))
    result["broker"]["ping_idle"] = summarize(run.phase("ping_idle", run.pings), 0)
    # an embed message the worker's pool rejects (version 0): the path a query answered by
    # a worker would take, through celery-batches' buffer and the pool process
    result["broker"]["pool_task_idle"] = summarize(run.pings(TASK_EMBED, (0, [])), 0)
    budget = run.phase("bare", lambda: _bare(run, conf, result))
    result["settings"] = shaping_settings(conf, budget)
    asyncio.run(_http(run, result))
    reset(run.conn)
    warm(run.conn, f"{run.salt}-again")
    reset(run.conn)
    run.phase("backlog_with_search", lambda: asyncio.run(_backlog_with_search(run, result)))
    result["api_rss_mb"] = run.rss
    result["api_passes"] = {k: v for k, v in run.passes.items() if "@" not in k}
    result["cpu"] = {k: v for k, v in run.cpu.items() if "@" not in k}


def run(config: ServeBenchConfig, conf: Settings) -> dict[str, Any]:
    from workers.app import create_app

    salt = f"serve-{int(time.time())}"
    result: dict[str, Any] = {
        "machine": machine(), "settings": {},
        "config": {"clients": list(config.clients), "docs": config.docs,
                   "seconds": config.seconds, "k": config.k, "client": config.client},
        "bare": {}, "http": {}, "broker": {}, "backlog": {}}
    started = time.perf_counter()
    texts = texts_for(config)
    with bench_home(conf, "pgfleet-bench-serve-", config.logs_dir) as bench:
        conf, endpoints = bench.conf, bench.endpoints
        database_url = endpoints.database_url
        celery_app = create_app(dataclasses.replace(conf, database_url=database_url,
                                                    redis_url=endpoints.redis_url))
        try:
            with db.connect(database_url, autocommit=True) as conn, \
                    ServeFleet(bench.home, bench.env, database_url, f"bench-{salt}") as fleet:
                fleet.server_pids = {s.name: s.process.pid for s in endpoints.embedded
                                     if s.process is not None}
                _phases(Run(config, fleet, conn, celery_app, salt, texts), conf, result)
        finally:
            celery_app.close()
    values = figures(result)
    result["targets"] = check_targets(values)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result
