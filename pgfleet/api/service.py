"""What the HTTP API does, without HTTP: one engine per model version, loaded once and fed
by a :class:`~pgfleet.embedding.batcher.Batcher`, so that concurrent requests share forward
passes; searches, embeddings and text-to-SQL answered through the same code as the command
line (:mod:`pgfleet.embedding.search`,
:func:`pgfleet.text2sql.generate.generate_sql`), so they are routed, cached and logged
alike.

The model runs inside the API's process, like an embedding server, not on the fleet's
workers: a query then never waits behind a backlog's batches in a worker's queue, and costs
no broker round trip (docs/api.md gives the figures of both).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from pgfleet import db
from pgfleet.api import keys, metrics
from pgfleet.api.cores import FreeCores
from pgfleet.embedding import search
from pgfleet.embedding.batcher import Batcher, BatcherClosed
from pgfleet.embedding.batching import as_array
from pgfleet.embedding.engines import Engine, ModelSpec, load_engine
from pgfleet.embedding.search import Answer
from pgfleet.errors import InferenceFailed, PgfleetError, UnknownModelVersion
from pgfleet.models import routing, versions
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)

#: how long a key found live is trusted without asking the database (its revocation takes
#: effect within this time)
KEY_TTL_S = 1.0
#: keys remembered at most (a flood of valid keys cannot grow the process)
KEYS_KEPT = 10_000


class BatchedEngine:
    """An engine whose ``encode`` goes through the version's batcher, so that a search's
    query joins the other callers' pass. An ONNX Runtime engine on one intra-op thread runs
    a pass per free core (the batcher's lanes); any other runs one pass at a time."""

    def __init__(self, engine: Engine, batcher: Batcher):
        self.engine = engine
        self.batcher = batcher
        self.parallel = is_one_core_onnx(engine)
        self.spec = engine.spec
        self.dimensions = engine.dimensions
        self.max_seq_length = engine.max_seq_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.batcher.embed(list(texts))

    def replace(self, engine: Engine) -> None:
        """Serve with ``engine`` (the same vectors) from the next pass on."""
        self.batcher.replace_encode(engine.encode)
        self.parallel = is_one_core_onnx(engine)
        self.engine = engine

    @property
    def runtime(self) -> str:
        return "onnxruntime" if type(self.engine).__name__ == "OnnxEngine" else "torch"

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.engine.token_counts(texts)


@dataclass
class Embeddings:
    version: versions.Version
    vectors: np.ndarray
    tokens: int
    cache_hits: int


class Service:
    def __init__(self, conf: Settings, *, pool_size: int = 32):
        if not conf.database_url:
            raise PgfleetError("the API needs PGFLEET_DATABASE_URL (pgfleet up sets it for "
                               "the API it starts)")
        self.conf = conf
        self.pool = db.open_pool(conf.database_url, min_size=1, max_size=pool_size,
                                 name="pgfleet-api", autocommit=True,
                                 check_after_idle_s=db.CHECK_AFTER_IDLE_S)
        self._engines: dict[int, BatchedEngine] = {}
        self._lock = threading.Lock()
        #: the cores the rest of the machine leaves free (sampled; see pgfleet.api.cores)
        self.free_cores = FreeCores()
        #: keys checked in the last KEY_TTL_S: digest -> (key, when checked)
        self._keys: dict[bytes, tuple[keys.ApiKey, float]] = {}

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.batcher.close()
            self._engines.clear()
        self.free_cores.close()
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with db.pooled(self.pool) as conn:
            yield conn

    def known_key(self, key: str | None) -> keys.ApiKey | None:
        """The live key ``key`` is if it was found live in the last ``KEY_TTL_S``, without
        asking the database; None when it must be looked up (:meth:`check_key`)."""
        if not key or not keys.well_formed(key):
            return None
        known = self._keys.get(keys.digest(key))
        if known is not None and time.monotonic() - known[1] < KEY_TTL_S:
            return known[0]
        return None

    def check_key(self, key: str | None) -> keys.ApiKey | None:
        """The live key ``key`` is (see :func:`pgfleet.api.keys.check`). A key found live is
        trusted for ``KEY_TTL_S`` without asking the database again, so a revoked key is
        refused within that time; unknown keys are always looked up, and what cannot be a key
        is refused without a lookup."""
        if not key or not keys.well_formed(key):
            return None
        known = self.known_key(key)
        if known is not None:
            return known
        digest, now = keys.digest(key), time.monotonic()
        with self.connection() as conn:
            found = keys.check(conn, key)
        if found is None:
            self._keys.pop(digest, None)
            return None
        if len(self._keys) >= KEYS_KEPT:
            self._keys.clear()
        self._keys[digest] = (found, now)
        return found

    # ----------------------------------------------------------------------- engines
    def engine(self, spec: ModelSpec) -> BatchedEngine:
        """The version's engine and batcher, made on first use and kept."""
        with self._lock:
            current = self._engines.get(spec.version_id)
            if current is not None and current.spec == spec:
                return current
            threads = 1 if spec.format.startswith("onnx") else api_threads(self.conf)
            engine = load_engine(spec, device=self.conf.device, threads=threads,
                                 token_budget=self.conf.token_budget)
            holder: list[BatchedEngine] = []
            batcher = Batcher(engine.encode, max_batch=self.conf.api_max_batch,
                              max_wait_s=self.conf.api_max_wait_ms / 1000,
                              name=f"batcher-{spec.label}", on_pass=metrics.BATCH.observe,
                              lanes=api_lanes(self.conf),
                              active_lanes=lambda: self.free_cores() if holder[0].parallel else 1)
            if current is not None:
                current.batcher.close()
            batched = BatchedEngine(engine, batcher)
            holder.append(batched)
            self._engines[spec.version_id] = batched
        if self.conf.api_engine == "auto" and getattr(engine, "device", None) == "cpu":
            threading.Thread(target=self._onnx_copy, args=(batched,), daemon=True,
                             name=f"onnx-copy-{spec.label}").start()
        return batched

    def _onnx_copy(self, batched: BatchedEngine) -> None:
        """Serve a torch version on a CPU with its ONNX Runtime copy once it is made and
        checked (see :mod:`pgfleet.api.onnx_copy`); until then, and if it cannot be, torch."""
        from pgfleet.api.onnx_copy import onnx_copy

        # one intra-op thread: the batcher runs a pass per free core
        copy = onnx_copy(batched.spec, batched.engine, threads=1,
                         token_budget=self.conf.token_budget)
        if copy is not None:
            batched.replace(copy)

    def loaded(self) -> list[dict[str, Any]]:
        """The engines loaded, with how full their passes were."""
        with self._lock:
            engines = list(self._engines.values())
        return [{"version": e.spec.label, "runtime": e.runtime,
                 "passes": dict(e.batcher.pass_sizes),
                 "passes_at_once": dict(e.batcher.concurrency),
                 "lanes": e.batcher.lanes if e.parallel else 1} for e in engines]

    def warm(self) -> None:
        """Load the engine of each serving embedding version now, so that the first request
        does not pay for it; a version that cannot be loaded is logged and left for later."""
        with self.connection() as conn:
            try:
                active = versions.find(conn, "embedding")
            except UnknownModelVersion:
                return
            serving = routing.serving(conn, "embedding", active.name) or [active]
        for version in serving:
            try:
                self.engine(version.spec).encode(["warm up"])
            except Exception as exc:  # noqa: BLE001 - the request that needs it reports it
                logger.warning("could not load %s: %s", version.label, exc)

    # ----------------------------------------------------------------------- requests
    def search(self, query: str, k: int, *, key: str | None = None,
               version: str | None = None, name: str | None = None) -> Answer:
        # the connection goes back to the pool while the model runs, so that the pool
        # does not bound how many searches share a pass
        with self.connection() as conn:
            begun = search.begin(conn, query, k, version_ref=version, key=key, name=name)
        vector, encode_s = begun.cached, 0.0
        if vector is None:
            engine = self.engine(begun.route.spec)
            started = time.perf_counter()
            vector = encode(engine, [query])[0]
            encode_s = time.perf_counter() - started
        with self.connection() as conn:
            return search.finish(conn, begun, vector, encode_s)

    def search_source(self, source: str, query: str, k: int, *, mode: str = "vector",
                      key: str | None = None, version: str | None = None) -> dict[str, Any]:
        """The rows of a source that best answer ``query``, each with its best chunk
        (:func:`pgfleet.sources.search.search_source`); the query is encoded by the
        version's batched engine, with every other caller's."""
        from pgfleet.sources.search import search_source

        with self.connection() as conn:
            return search_source(conn, self.engine, source, query, k, mode=mode,
                                 version_ref=version, key=key)

    def embed(self, model: str, texts: list[str], *, key: str | None = None) -> Embeddings:
        """Vectors for ``texts`` from the version ``model`` names: a model name (routed by its
        A/B split, sticky for ``key``) or a version (``v2``, ``name@v2``, an id). Cached ones
        come from the inference cache; each distinct text is encoded once."""
        digests = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
        with self.connection() as conn:
            chosen = resolve(conn, model, key)
            spec = chosen.spec
            found = {bytes(r["input_hash"]): as_array(r["embedding"])
                     for r in db.fetch_all(conn, "api_cache_lookup",
                                           {"version_id": spec.version_id,
                                            "hashes": list(set(digests))})}
        engine = self.engine(spec)
        tokens = sum(engine.token_counts(texts))
        missing: dict[bytes, str] = {}
        for digest, text in zip(digests, texts, strict=True):
            if digest not in found:
                missing.setdefault(digest, text)
        if missing:
            # no connection is held while the model runs
            fresh = dict(zip(missing, encode(engine, list(missing.values())), strict=True))
            with self.connection() as conn:
                db.execute(conn, "api_cache_insert",
                           {"version_id": spec.version_id, "hashes": list(fresh),
                            "embeddings": list(fresh.values())})
            found.update(fresh)
        vectors = np.stack([found[d] for d in digests]).astype(np.float32, copy=False)
        return Embeddings(chosen, vectors, tokens, cache_hits=len(texts) - len(missing))


def encode(engine: BatchedEngine, texts: list[str]) -> np.ndarray:
    """The engine's vectors; a failure of the model on validated input is the server's
    (``InferenceFailed``: 500), never the caller's 422 that a bare ValueError would give.
    A closed batcher (the API stopping) and a model that cannot load keep their errors."""
    try:
        return engine.encode(texts)
    except (BatcherClosed, PgfleetError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the engine raised, said as the server's
        raise InferenceFailed(f"the model failed on this request ({type(exc).__name__}: "
                              f"{exc}); the server's log has the details") from exc


def api_threads(conf: Settings) -> int:
    """The API engines' torch threads: ``PGFLEET_API_THREADS``, else
    ``PGFLEET_TORCH_THREADS``, else half the cores. The API shares the machine with the
    workers; on 2 cores, two processes each running torch on both cores took turns spinning,
    and the backlog kept 0.27 of its speed under one search client (0.47 with one thread
    here, see docs/benchmarks.md)."""
    return conf.api_threads or conf.torch_threads or max(1, (os.cpu_count() or 2) // 2)


def api_lanes(conf: Settings) -> int:
    """The most passes an API engine runs at once (one per core): ``PGFLEET_API_THREADS``,
    else every core; how many run at a time follows the free cores."""
    return conf.api_threads or os.cpu_count() or 1


def is_one_core_onnx(engine: Engine) -> bool:
    session = getattr(engine, "session", None)
    if session is None:
        return False
    threads = session.get_session_options().intra_op_num_threads
    return threads == 1


def resolve(conn: psycopg.Connection, model: str, key: str | None = None) -> versions.Version:
    """The embedding version an API caller's ``model`` names: a model name is routed by its
    split; anything else is a version reference."""
    candidates = routing.serving(conn, "embedding", model)
    if candidates:
        return routing.choose(model, candidates, key)
    return versions.find(conn, "embedding", model)
