"""Search: routed to a model version by its A/B split, embedded by that version's own engine,
searched only against that version's vectors, and logged.

Routing: with ``--version`` the named version answers. Otherwise the version is assigned by
traffic percent among the serving versions of the model name (sticky with a key, random
without). If the assigned version is still being backfilled, the search **falls back** to the
complete serving version with the most traffic and says so (``fallback_from``); a version
that is incomplete and has no complete alternative answers anyway, flagged ``incomplete``.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import schema
from pgfleet import db
from pgfleet.embedding.batching import as_array
from pgfleet.embedding.engines import ModelSpec
from pgfleet.models import inference_logs, routing, splits, versions


@dataclass
class Hit:
    doc_id: int
    score: float
    content: str
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "score": round(self.score, 6), "content": self.content,
                "metadata": self.metadata}


@dataclass
class Route:
    spec: ModelSpec
    assigned: ModelSpec
    fallback_from: str | None = None
    incomplete: bool = False


@dataclass
class Answer:
    query: str
    route: Route
    hits: list[Hit] = field(default_factory=list)
    latency_ms: float = 0.0
    cache_hit: bool = False
    log_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "version": self.route.spec.label,
                               "assigned_version": self.route.assigned.label,
                               "log_id": self.log_id, "latency_ms": round(self.latency_ms, 2),
                               "cache_hit": self.cache_hit,
                               "hits": [h.as_json() for h in self.hits]}
        if self.route.fallback_from:
            out["fallback_from"] = self.route.fallback_from
        if self.route.incomplete:
            out["incomplete"] = True
        return out


def search_sql(dims: int) -> sql.Composed:
    return sql.SQL(schema.query("search")).format(dims=sql.Literal(dims))


def route_and_cached(conn: psycopg.Connection, version_ref: str | None, key: str | None,
                     name: str | None, digest: bytes, *,
                     source_id: int | None = None) -> tuple[Route, Any]:
    """The version named, else the one the split assigns (:func:`pgfleet.models.routing.route`;
    one still being backfilled hands over to the complete serving version with the most
    traffic), and that version's cached vector of the query whose hash is ``digest`` (None:
    not cached): a routed search's first round trip finds both. With ``source_id``, a
    version is backfilling while it has backfill rows of that source (else of docs)."""
    if version_ref is not None:
        named = routing.route(conn, "embedding", version_ref, key, name)
        return Route(named.spec, named.spec), _cached(conn, named.spec, digest)
    # the serving versions, whether each is being backfilled and its cached vector of the
    # query, in one round trip; binary: pgvector's loader reads 384 floats as one buffer
    with conn.cursor(binary=True, row_factory=dict_row) as cur:
        rows = cur.execute(schema.query("serving_versions_backfilling"),
                           {"kind": "embedding", "name": name, "input_hash": digest,
                            "source_id": source_id}).fetchall()
    if not rows:   # no version serves: routing says why (or one began to, meanwhile)
        routed = routing.route(conn, "embedding", None, key, name)
        return Route(routed.spec, routed.spec), _cached(conn, routed.spec, digest)
    serving = [versions.Version.from_row(r) for r in rows]
    backfilling = {int(r["id"]) for r in rows if r["backfilling"]}
    chosen = splits.assign(serving[0].name, [(v.version, v.traffic_percent) for v in serving],
                           key=key)
    assigned = next(v for v in serving if v.version == chosen)
    if assigned.id not in backfilling:
        found = Route(assigned.spec, assigned.spec)
    else:
        complete = splits.leader([v for v in serving if v.id not in backfilling],
                                 lambda v: v.traffic_percent)
        if complete is not None:
            found = Route(complete.spec, assigned.spec, fallback_from=assigned.label)
        else:
            found = Route(assigned.spec, assigned.spec, incomplete=True)
    vector = next((r["cached"] for r in rows if int(r["id"]) == found.spec.version_id), None)
    return found, (as_array(vector) if vector is not None else None)


def _cached(conn: psycopg.Connection, spec: ModelSpec, digest: bytes) -> Any:
    """Version ``spec``'s cached vector of the query whose hash is ``digest``, or None."""
    with conn.cursor(binary=True) as cur:
        row = cur.execute(schema.query("cache_query_vector"),
                          (spec.version_id, digest)).fetchone()
    return as_array(row[0]) if row is not None else None


@dataclass
class Begun:
    """A search routed, with its query's vector when the cache had it: what
    :func:`finish` completes once the vector is known (so that a caller may give its
    connection back while the model runs)."""

    query: str
    k: int
    key: str | None
    route: Route
    digest: bytes
    cached: Any = None
    elapsed_s: float = 0.0

    @property
    def cache_hit(self) -> bool:
        return self.cached is not None


def begin(conn: psycopg.Connection, text: str, k: int, *, version_ref: str | None = None,
          key: str | None = None, name: str | None = None) -> Begun:
    """Route, and look the query up in the version's cache (:func:`finish` counts a hit)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    started = time.perf_counter()
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    chosen, cached = route_and_cached(conn, version_ref, key, name, digest)
    return Begun(text, k, key, chosen, digest, cached, time.perf_counter() - started)


def finish(conn: psycopg.Connection, begun: Begun, vector, encode_s: float = 0.0) -> Answer:
    """Search that version's vectors only, and log it, caching a vector the model computed
    in the same statement; the latency counts routing, the cache, ``encode_s`` and the
    search."""
    started = time.perf_counter()
    spec = begun.route.spec
    hits = nearest(conn, spec, vector, begun.k)
    latency_ms = (begun.elapsed_s + encode_s + time.perf_counter() - started) * 1000
    log = inference_logs.row(
        "search", version_id=spec.version_id,
        assigned_version_id=begun.route.assigned.version_id, latency_ms=latency_ms,
        cache_hits=int(begun.cache_hit), model_calls=int(not begun.cache_hit), key=begun.key,
        results=[h.doc_id for h in hits])
    if begun.cache_hit:
        logged = db.fetch_one(conn, "log_search_counting_cache_hit",
                              {**log, "input_hash": begun.digest})
    else:
        logged = db.fetch_one(conn, "log_search_caching_query_vector",
                              {**log, "input_hash": begun.digest, "embedding": vector})
    assert logged is not None   # INSERT ... RETURNING returns the row it inserted
    log_id = int(logged["id"])
    return Answer(begun.query, begun.route, hits, latency_ms, begun.cache_hit, log_id)


#: the ``hnsw.ef_search`` each autocommit connection was given for its session
_session_ef_search: weakref.WeakKeyDictionary[psycopg.Connection, str] = (
    weakref.WeakKeyDictionary())


def nearest(conn: psycopg.Connection, spec: ModelSpec, vector, k: int) -> list[Hit]:
    """The ``k`` docs nearest to ``vector`` among version ``spec``'s vectors.

    HNSW returns at most ``hnsw.ef_search`` candidates, so a search asks for at least k. In
    a transaction it is set for that transaction only. An autocommit connection (the API's
    pool) keeps it for its session and is given a new one only when k needs it, so that a
    search is one round trip instead of four (BEGIN, the setting, the query, COMMIT)."""
    rows = fetch_nearest(conn, search_sql(spec.dimensions),
                         {"query": vector, "version_id": spec.version_id, "k": k}, k)
    return [Hit(r["id"], float(r["score"]), r["content"], r["metadata"]) for r in rows]


def fetch_nearest(conn: psycopg.Connection, query: sql.Composed, params: dict[str, Any],
                  candidates: int) -> list[dict[str, Any]]:
    """The rows of an HNSW ``query`` asking for ``candidates`` nearest vectors, with
    ``hnsw.ef_search`` at least that (at most pgvector's 1,000): for the query's
    transaction, or for the session of an idle autocommit connection (see ``nearest``)."""
    ef_search = str(min(1000, max(40, candidates)))
    with conn.cursor(row_factory=dict_row) as cur:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.autocommit and idle:
            if _session_ef_search.get(conn) != ef_search:
                cur.execute(schema.query("search_ef_search_session"), (ef_search,))
                _session_ef_search[conn] = ef_search
            return cur.execute(query, params).fetchall()
        with conn.transaction():
            cur.execute(schema.query("search_ef_search"), (ef_search,))
            return cur.execute(query, params).fetchall()


def routed_search(conn: psycopg.Connection, engines, text: str, k: int, *,
                  version_ref: str | None = None, key: str | None = None,
                  name: str | None = None) -> Answer:
    """Route, embed (cache first), search that version's vectors only, and log it."""
    begun = begin(conn, text, k, version_ref=version_ref, key=key, name=name)
    if begun.cache_hit:
        return finish(conn, begun, begun.cached)
    # loading a model the first time is not part of a search's latency
    engine = engines(begun.route.spec)
    started = time.perf_counter()
    vector = engine.encode([text])[0]
    return finish(conn, begun, vector, time.perf_counter() - started)
