"""Inference cache maintenance: prune unused entries, bound the table, report statistics.

The cache (``model_cache``) holds one vector per (model version, SHA-256 of the input) and
counts its hits. It is maintained on a schedule (Celery beat sends ``pgfleet.prune_cache``
every ``PGFLEET_CACHE_PRUNE_INTERVAL_S``) and by hand (``pgfleet cache prune``):

1. entries **unused** (last hit, else creation) for ``PGFLEET_CACHE_MAX_AGE_S`` that have
   fewer than ``PGFLEET_CACHE_MIN_HITS`` hits are deleted;
2. if more than ``PGFLEET_CACHE_MAX_ENTRIES`` remain, the least useful are evicted down to
   the bound: entries below the hit threshold before the others, unused the longest first.

Deletes run in chunks, each its own short transaction, and skip rows a worker holds locked;
a cache row deleted between a worker's lookup and its write only costs that hit's count.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

import schema
from pgfleet import db
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)

#: rows deleted per statement (and per transaction)
DELETE_CHUNK = 10_000
#: the hit ratio is measured over this recent window (``inference_logs``)
HIT_RATIO_WINDOW_S = 3600.0


@dataclass(frozen=True)
class CachePolicy:
    max_age_s: float
    min_hits: int
    #: 0: no bound
    max_entries: int

    @classmethod
    def from_settings(cls, settings: Settings) -> CachePolicy:
        return cls(settings.cache_max_age_s, settings.cache_min_hits, settings.cache_max_entries)


@dataclass
class PruneReport:
    #: entries deleted because they were unused and seldom hit
    unused: int = 0
    #: entries evicted to keep the table within max_entries
    evicted: int = 0
    #: entries left
    entries: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def eviction_plan(entries: int, max_entries: int, chunk: int = DELETE_CHUNK) -> list[int]:
    """How many rows each eviction statement deletes to bring ``entries`` down to
    ``max_entries`` (0: no bound, nothing to evict)."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    excess = entries - max_entries if max_entries > 0 else 0
    plan = []
    while excess > 0:
        plan.append(min(excess, chunk))
        excess -= plan[-1]
    return plan


def hit_ratio(hits: int, lookups: int) -> float | None:
    """Lookups answered from the cache, or None when there were none."""
    return hits / lookups if lookups > 0 else None


def prune(conn: psycopg.Connection, policy: CachePolicy, *,
          chunk: int = DELETE_CHUNK) -> PruneReport:
    """Delete unused, seldom-hit entries, then evict down to ``policy.max_entries``."""
    report = PruneReport()
    with db.mapped_errors():
        while True:
            deleted = _delete(conn, "cache_prune_unused", {
                "max_age_s": policy.max_age_s, "min_hits": policy.min_hits, "limit": chunk})
            report.unused += deleted
            if deleted < chunk:
                break
        report.entries = _entries(conn)
        for size in eviction_plan(report.entries, policy.max_entries, chunk):
            deleted = _delete(conn, "cache_evict", {"min_hits": policy.min_hits,
                                                    "limit": size})
            report.evicted += deleted
            if deleted < size:  # the rest is locked by workers right now: next round
                break
        report.entries -= report.evicted
    if report.unused or report.evicted:
        logger.info("inference cache pruned: unused=%d evicted=%d entries=%d",
                    report.unused, report.evicted, report.entries)
    return report


def stats(conn: psycopg.Connection, policy: CachePolicy, *,
          window_s: float = HIT_RATIO_WINDOW_S) -> dict[str, Any]:
    """Entries, hits, what the next prune removes and the recent hit ratio, per embedding
    version (active, or with entries) and in total; the table's size on disk."""
    with db.mapped_errors():
        rows = db.fetch_all(conn, "cache_stats", {
            "window_s": window_s, "max_age_s": policy.max_age_s, "min_hits": policy.min_hits})
        size = db.fetch_one(conn, "cache_size")
    versions = [{
        "version_id": r["version_id"], "name": r["name"], "version": r["version"],
        "entries": int(r["entries"]), "hits": int(r["hits"]), "prunable": int(r["prunable"]),
        "oldest_entry_s": round(float(r["oldest_s"]), 3) if r["oldest_s"] is not None else None,
        "window_hits": int(r["window_hits"]), "window_lookups": int(r["window_lookups"]),
        "hit_ratio": hit_ratio(int(r["window_hits"]), int(r["window_lookups"])),
    } for r in rows]
    totals = {key: sum(v[key] for v in versions)
              for key in ("entries", "hits", "prunable", "window_hits", "window_lookups")}
    return {
        "versions": versions,
        **totals,
        "hit_ratio": hit_ratio(totals["window_hits"], totals["window_lookups"]),
        "window_s": window_s,
        "size_bytes": int(size["size_bytes"]) if size else 0,
        "policy": asdict(policy),
    }


def _delete(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> int:
    with conn.transaction():
        return conn.execute(schema.query(name), params).rowcount


def _entries(conn: psycopg.Connection) -> int:
    row = db.fetch_one(conn, "cache_entries")
    return int(row["entries"]) if row else 0
