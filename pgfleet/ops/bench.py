"""``pgfleet bench``: the fleet against the bare model, side by side, on this machine.

1. **bare**: the same sentence-transformers model, in this process, encoding the same texts
   in one ``encode`` call (sorted by length across the whole set) at batch sizes 16 and 64;
   the faster is the reference (``backlog_ratio`` = fleet / bare). pgfleet's own engine
   (token-budget passes) is measured too, so ``fleet_to_engine_ratio`` isolates the cost of
   the queue, the database and Python;
2. **backlog**: the texts inserted in one transaction, timed from commit until every doc
   has a vector; reported as docs/s and as a ratio to bare;
3. **idle latency**: single inserts spaced apart, each timed from commit until its vector
   is visible (polled every 2 ms); p50/p95/p99;
4. **scale** (``--scale N``, instead of the others): N docs inserted up front and drained,
   with the embedded count, and each process's resident memory and CPU time, sampled every
   few seconds: throughput in the first and last tenth, memory at a tenth and at the end.

It starts its own embedded servers and fleet processes (producer + the torch worker) in a
temporary directory unless ``PGFLEET_DATABASE_URL`` and ``PGFLEET_REDIS_URL`` are set.

This module holds the run and its report (the phases, and the figures each adds);
:mod:`pgfleet.ops.bench_measure` the measurements they take, and
:mod:`pgfleet.ops.bench_scale` the scale run.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgfleet import corpus, db
from pgfleet.models import stats
from pgfleet.ops.bench_measure import (
    BARE_BATCH_SIZES,
    Fleet,
    bench_home,
    cost_per_doc,
    engine_throughput,
    fleet_backlog,
    idle_latencies,
    int8_version,
    reference_throughput,
    reset,
    warm,
)
from pgfleet.ops.bench_scale import scale_phase
from pgfleet.settings import Settings

__all__ = ["BARE_BATCH_SIZES", "BenchConfig", "engine_throughput", "fleet_backlog",
           "idle_latencies", "machine", "reference_throughput", "run"]


@dataclass
class BenchConfig:
    docs: int = 5000
    short_docs: int = 2000
    batching: bool = True
    torch: bool = True
    int8: bool = True
    idle_samples: int = 30
    idle_gap_s: float = 0.3
    texts: str = "paragraphs"  # or "short"
    timeout_s: float = 1800.0
    logs_dir: Path | None = None
    #: docs in the scale run (0: no scale run); it replaces the other phases
    scale: int = 0
    scale_engine: str = "int8"  # or "torch"
    sample_s: float = 5.0


def _texts(config: BenchConfig, salt: str) -> list[str]:
    base = (corpus.stdlib_paragraphs(config.docs) if config.texts == "paragraphs"
            else corpus.short_rows(config.docs))
    if len(base) < config.docs:
        raise RuntimeError(f"only {len(base)} distinct texts available, asked for {config.docs}")
    # a run-specific prefix keeps the inference cache out of the measurement
    return [f"[{salt}] {t}" for t in base]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _torch_phase(conn, home, env, conf, config, salt, texts, result) -> None:
    with Fleet(home, env, ("producer", "worker-gpu")):
        warm(conn, salt)
        reference = reference_throughput(texts, conf)
        bare = max(reference["bare"].values())
        reset(conn)
        fleet = fleet_backlog(conn, texts, config.timeout_s)
        model_cost = cost_per_doc(conn, "model")
        # the same contents again, as new docs: every one is a cache hit
        cached = fleet_backlog(conn, texts, config.timeout_s, poll_s=0.02)
        hit_cost = cost_per_doc(conn, "hit")
        idle_texts = [f"[{salt}] idle {i}: {t}" for i, t in
                      enumerate(corpus.short_rows(config.idle_samples))]
        latencies = idle_latencies(conn, idle_texts, config.idle_gap_s)
    result["torch"] = {
        "bare_docs_per_s": round(bare, 1),
        "bare_docs_per_s_by_batch": {str(k): round(v, 1) for k, v in reference["bare"].items()},
        "engine_docs_per_s": round(reference["engine"], 1),
        "fleet_docs_per_s": round(fleet, 1),
        "fleet_cached_docs_per_s": round(cached, 1),
    }
    result["backlog_ratio"]["torch"] = round(fleet / bare, 3)
    result["engine_ratio"]["torch"] = round(fleet / reference["engine"], 3)
    # end to end through the fleet (queue, database, worker): what a cache hit costs a user
    result["cache_cost_ratio"] = round(fleet / cached, 4)
    # inside the worker, from inference_logs (fetch to write, per doc)
    result["cache_worker_ms_per_doc"] = {"hit": round(hit_cost, 3), "model": round(model_cost, 3)}
    result.update(idle_samples=len(latencies),
                  idle_p50_ms=round(stats.percentile(latencies, 50), 1),
                  idle_p95_ms=round(stats.percentile(latencies, 95), 1),
                  idle_p99_ms=round(stats.percentile(latencies, 99), 1))


def _batching_phase(conn, home, env, config, salt, result) -> None:
    rows = [f"[{salt}] {t}" for t in corpus.short_rows(config.short_docs)]
    rates = {}
    for label, batch in (("batched", None), ("batch_size_1", "1")):
        extra = {"PGFLEET_BATCH_MAX_DOCS": batch} if batch else {}
        with Fleet(home, env, ("producer", "worker-gpu"), **extra):
            warm(conn, f"{salt}-{label}")
            reset(conn)
            rates[label] = fleet_backlog(conn, [f"{label} {t}" for t in rows], config.timeout_s)
    result["batching"] = {"short_rows": len(rows),
                          **{f"{k}_docs_per_s": round(v, 1) for k, v in rates.items()}}
    result["batching_gain"] = round(rates["batched"] / rates["batch_size_1"], 2)


def _int8_phase(conn, home, env, conf, config, salt, texts, result) -> None:
    from pgfleet.embedding.engines import load_for
    from pgfleet.models import abtest

    source, spec = int8_version(conn, conf)
    engine = load_for(spec, conf)
    engine.encode(texts[:64])
    bare = engine_throughput(engine, texts, conf.batch_max_docs)
    abtest.set_split(conn, source.name, {"bench-int8": 100})
    try:
        with Fleet(home, env, ("producer", "worker-cpu")):
            warm(conn, f"{salt}-int8")
            reset(conn)
            fleet = fleet_backlog(conn, [f"int8 {t}" for t in texts], config.timeout_s)
    finally:
        abtest.set_split(conn, source.name, {"v1": 100})
    result["onnx_int8"] = {"engine_docs_per_s": round(bare, 1), "fleet_docs_per_s": round(fleet, 1)}
    result["backlog_ratio"]["onnx_int8"] = round(fleet / bare, 3)
    result["engine_ratio"]["onnx_int8"] = round(fleet / bare, 3)


def run(config: BenchConfig, conf: Settings) -> dict[str, Any]:
    salt = f"bench-{int(time.time())}"
    texts = _texts(config, salt)
    result: dict[str, Any] = {"machine": machine(), "docs": config.docs, "texts": config.texts,
                              "batch_max_docs": conf.batch_max_docs, "backlog_ratio": {},
                              "engine_ratio": {}}
    with bench_home(conf, "pgfleet-bench-", config.logs_dir) as bench, \
            db.connect(bench.endpoints.database_url, autocommit=True) as conn:
        home, env, conf = bench.home, bench.env, bench.conf
        if config.scale:
            scale_phase(conn, home, env, conf, config, salt, result)
            return result
        if config.torch:
            _torch_phase(conn, home, env, conf, config, salt, texts, result)
        if config.batching:
            _batching_phase(conn, home, env, config, salt, result)
        if config.int8:
            _int8_phase(conn, home, env, conf, config, salt, texts, result)
    return result
