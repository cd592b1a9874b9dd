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
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from pgfleet import db
from pgfleet.api import metrics
from pgfleet.embedding import search
from pgfleet.embedding.batcher import Batcher
from pgfleet.embedding.batching import as_array
from pgfleet.embedding.engines import Engine, ModelSpec, load_engine
from pgfleet.embedding.search import Answer
from pgfleet.errors import PgfleetError, UnknownModelVersion
from pgfleet.models import routing, versions
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)


class BatchedEngine:
    """An engine whose ``encode`` goes through the version's batcher, so that a search's
    query joins the other callers' pass."""

    def __init__(self, engine: Engine, batcher: Batcher):
        self.engine = engine
        self.batcher = batcher
        self.spec = engine.spec
        self.dimensions = engine.dimensions
        self.max_seq_length = engine.max_seq_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.batcher.embed(list(texts))

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.engine.token_counts(texts)


@dataclass
class Embeddings:
    version: versions.Version
    vectors: np.ndarray
    tokens: int
    cache_hits: int


class Service:
    def __init__(self, conf: Settings, *, pool_size: int = 8):
        if not conf.database_url:
            raise PgfleetError("the API needs PGFLEET_DATABASE_URL (pgfleet up sets it for "
                               "the API it starts)")
        self.conf = conf
        self.pool = db.open_pool(conf.database_url, min_size=1, max_size=pool_size,
                                 name="pgfleet-api", autocommit=True)
        self._engines: dict[int, BatchedEngine] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.batcher.close()
            self._engines.clear()
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with db.pooled(self.pool) as conn:
            yield conn

    # ----------------------------------------------------------------------- engines
    def engine(self, spec: ModelSpec) -> BatchedEngine:
        """The version's engine and batcher, made on first use and kept."""
        with self._lock:
            current = self._engines.get(spec.version_id)
            if current is not None and current.spec == spec:
                return current
            engine = load_engine(spec, device=self.conf.device,
                                 threads=self.conf.api_threads or self.conf.torch_threads,
                                 token_budget=self.conf.token_budget)
            batcher = Batcher(engine.encode, max_batch=self.conf.api_max_batch,
                              max_wait_s=self.conf.api_max_wait_ms / 1000,
                              name=f"batcher-{spec.label}", on_pass=metrics.BATCH.observe)
            if current is not None:
                current.batcher.close()
            self._engines[spec.version_id] = BatchedEngine(engine, batcher)
            return self._engines[spec.version_id]

    def loaded(self) -> list[dict[str, Any]]:
        """The engines loaded, with how full their passes were."""
        with self._lock:
            engines = list(self._engines.values())
        return [{"version": e.spec.label, "passes": dict(e.batcher.pass_sizes)}
                for e in engines]

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
            vector = engine.encode([query])[0]
            encode_s = time.perf_counter() - started
        with self.connection() as conn:
            return search.finish(conn, begun, vector, encode_s)

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
            fresh = dict(zip(missing, engine.encode(list(missing.values())), strict=True))
            with self.connection() as conn:
                db.execute(conn, "api_cache_insert",
                           {"version_id": spec.version_id, "hashes": list(fresh),
                            "embeddings": list(fresh.values())})
            found.update(fresh)
        vectors = np.stack([found[d] for d in digests]).astype(np.float32, copy=False)
        return Embeddings(chosen, vectors, tokens, cache_hits=len(texts) - len(missing))


def resolve(conn: psycopg.Connection, model: str, key: str | None = None) -> versions.Version:
    """The embedding version an API caller's ``model`` names: a model name is routed by its
    split; anything else is a version reference."""
    if routing.serving(conn, "embedding", model):
        return routing.route(conn, "embedding", None, key, model)
    return versions.find(conn, "embedding", model)
