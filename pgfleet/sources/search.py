"""Search over a source: rows, each with its best chunk, at most one hit per row.

* ``vector``: the query embedded by the version that answers (routed by the A/B split of
  the source's model, or named; a version still backfilling the source hands over to the
  complete serving version with the most traffic and says so, ``fallback_from``, as a
  search of docs does), then that version's nearest chunks, from the source's and
  version's own HNSW index (``hnsw.ef_search`` raised to the candidates read, so that k
  distinct rows survive);
* ``hybrid``: those and PostgreSQL's full-text matches over the same chunks (the source's
  text search configuration, ``websearch_to_tsquery``: words, "phrases", or, -not), fused by
  reciprocal rank fusion: a chunk scores ``1 / (60 + rank)`` in each list it is in, and a
  row takes its best chunk's score.

The query's vector comes from the inference cache when it has it, and every search is
logged in ``inference_logs`` like a search of docs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import schema
from pgfleet import db
from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.search import fetch_nearest, route_and_cached
from pgfleet.models import inference_logs
from pgfleet.sources import catalog

MODES = ("vector", "hybrid")
#: reciprocal rank fusion's constant (Cormack et al.; pgvector's and most engines' default)
RRF_K = 60
#: chunks read per hit asked for, so that k distinct rows survive keeping one chunk per row
CANDIDATES_PER_HIT = 8
MAX_CANDIDATES = 1000


def search_source(conn: psycopg.Connection, engines: Callable[[ModelSpec], Engine],
                  source_name: str, query: str, k: int = 10, *, mode: str = "vector",
                  version_ref: str | None = None, key: str | None = None) -> dict[str, Any]:
    """The ``k`` rows of the source that best answer ``query``."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use {' or '.join(MODES)}")
    if not 1 <= k <= 1000:
        raise ValueError("k must be 1 to 1000")
    started = time.perf_counter()
    source = catalog.get(conn, source_name)
    digest = hashlib.sha256(query.encode("utf-8")).digest()
    route, cached = route_and_cached(conn, version_ref, key, source.model_name, digest,
                                     source_id=source.id)
    spec = route.spec
    vector = cached if cached is not None else engines(spec).encode([query])[0]
    candidates = min(MAX_CANDIDATES, k * CANDIDATES_PER_HIT)
    params = {"source_id": source.id, "version_id": spec.version_id, "query": vector,
              "candidates": candidates, "text_config": source.text_config,
              "query_text": query}
    nearest = fetch_nearest(conn, nearest_sql(spec.dimensions), params, candidates)
    with conn.cursor(row_factory=dict_row) as cur:
        matches = (cur.execute(schema.query("source_text_matches"), params).fetchall()
                   if mode == "hybrid" else [])
    hits = _fuse(nearest, matches, k) if mode == "hybrid" else _best_per_row(nearest, k)
    latency_ms = (time.perf_counter() - started) * 1000.0
    log = inference_logs.row("search", version_id=spec.version_id,
                             assigned_version_id=route.assigned.version_id,
                             latency_ms=latency_ms,
                             cache_hits=int(cached is not None),
                             model_calls=int(cached is None), key=key)
    if cached is not None:
        logged = db.fetch_one(conn, "log_search_counting_cache_hit", {**log, "input_hash": digest})
    else:
        logged = db.fetch_one(conn, "log_search_caching_query_vector",
                              {**log, "input_hash": digest, "embedding": vector})
    assert logged is not None
    out: dict[str, Any] = {
        "query": query, "source": source.name, "mode": mode, "version": spec.label,
        "assigned_version": route.assigned.label, "log_id": int(logged["id"]),
        "latency_ms": round(latency_ms, 2), "cache_hit": cached is not None,
        "hits": [_hit(source.name, r, s) for r, s in hits]}
    if route.fallback_from:
        out["fallback_from"] = route.fallback_from
    if route.incomplete:
        out["incomplete"] = True
    return out


def nearest_sql(dims: int) -> sql.Composed:
    """The nearest-chunks query for a version of ``dims`` dimensions: the expression of its
    HNSW index."""
    return sql.SQL(schema.query("source_nearest")).format(dims=sql.Literal(dims))


def _best_per_row(rows: list[dict[str, Any]], k: int) -> list[tuple[dict[str, Any], float]]:
    best: dict[str, tuple[dict[str, Any], float]] = {}
    for row in rows:   # in rank order: a row's first chunk is its best
        best.setdefault(row["row_key"], (row, float(row["score"])))
    return list(best.values())[:k]


def _fuse(nearest: list[dict[str, Any]], matches: list[dict[str, Any]], k: int,
          ) -> list[tuple[dict[str, Any], float]]:
    scores: dict[tuple[str, int], float] = {}
    chunks: dict[tuple[str, int], dict[str, Any]] = {}
    for ranked in (nearest, matches):
        for rank, row in enumerate(ranked, start=1):
            at = (row["row_key"], int(row["chunk"]))
            scores[at] = scores.get(at, 0.0) + 1.0 / (RRF_K + rank)
            chunks.setdefault(at, row)
    order = sorted(scores, key=lambda at: (-scores[at], at))
    best: dict[str, tuple[dict[str, Any], float]] = {}
    for at in order:
        best.setdefault(at[0], (chunks[at], scores[at]))
    return list(best.values())[:k]


def _hit(source: str, row: dict[str, Any], score: float) -> dict[str, Any]:
    return {"source": source, "key": row["row_key"], "score": round(score, 6),
            "chunk": {"number": int(row["chunk"]), "text": row["content"],
                      "heading": row["heading"], "start": int(row["start_offset"]),
                      "end": int(row["end_offset"])}}
