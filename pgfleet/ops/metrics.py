"""The fleet's Prometheus endpoint: what an operator pages on, read from PostgreSQL.

Every metric is computed from the database when Prometheus scrapes (a custom collector), so
any process that reaches PostgreSQL serves the same numbers: ``pgfleet up`` runs one as a
supervised child, ``pgfleet metrics`` runs one standalone (Procfile, compose). Flower's own
``/metrics`` covers Celery task counters; this endpoint covers the data.

Embedding batch size and latency histograms come from ``inference_logs``: every batch's
write already inserts one row there (version, worker, docs, cache hits, latency from fetch
to vectors ready), in the same statement as the vectors. We read that table rather than
use prometheus_client's multiprocess mode because the workers are separate processes,
usually on other machines or in other containers: multiprocess mode needs every process on
one host writing files into one shared directory (cleaned up as pool processes come and
go), and what a machine counted is lost with it. The table is already shared by every
worker, durable and exact, and reading it costs the workers nothing. The collector reads
only the rows logged since its last scrape and keeps running totals, so the histograms are
true Prometheus counters; its first scrape reads the whole log once, so every process
serving the endpoint reports the same totals, restarts included.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from pgfleet import db
from pgfleet.embedding import cache
from pgfleet.errors import PgfleetError
from pgfleet.models.stats import coverage as share_embedded
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)

#: seconds; from one doc up to a large GPU batch
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: docs per batch
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: a log row is read once its transaction began this long ago (see the metrics_logs query)
SETTLE_S = 10.0
#: no scrape query runs longer than this
STATEMENT_TIMEOUT_MS = 10_000
TRAINING_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
LABELS = ["model", "version"]


@dataclass
class VersionTotals:
    """Running totals of one version's logged embedding batches and cache lookups."""

    batch_sizes: Counter[int] = field(default_factory=Counter)
    latency_buckets: Counter[int] = field(default_factory=Counter)
    latency_sum_s: float = 0.0
    batches: int = 0
    docs: int = 0
    #: docs of embedding batches and queries of searches, and those answered from the cache
    lookups: int = 0
    cache_hits: int = 0


@dataclass
class LogTotals:
    """What ``inference_logs`` held up to ``up_to``, per version id."""

    up_to: Any = None
    versions: dict[int, VersionTotals] = field(default_factory=lambda: defaultdict(VersionTotals))

    def add(self, rows: list[dict[str, Any]], up_to: Any) -> None:
        for r in rows:
            totals = self.versions[r["version_id"]]
            n, size = int(r["n"]), int(r["batch_size"])
            totals.lookups += size * n
            totals.cache_hits += int(r["cache_hits"] or 0)
            if r["task"] != "embed":
                continue
            totals.batches += n
            totals.docs += size * n
            totals.batch_sizes[size] += n
            totals.latency_buckets[int(r["latency_bucket"])] += n
            totals.latency_sum_s += float(r["latency_ms"] or 0.0) / 1000.0
        self.up_to = up_to


def size_buckets(counts: Counter[int], bounds: tuple[int, ...] = BATCH_SIZE_BUCKETS,
                 ) -> list[tuple[str, float]]:
    """Cumulative ``le`` buckets of exact values (batch sizes)."""
    cumulative = [0] * len(bounds)
    for value, n in counts.items():
        for i in range(bisect_left(bounds, value), len(bounds)):
            cumulative[i] += n
    return [*((floatToGoString(b), float(c)) for b, c in zip(bounds, cumulative, strict=True)),
            ("+Inf", float(sum(counts.values())))]


def latency_buckets(counts: Counter[int], bounds: tuple[float, ...] = LATENCY_BUCKETS_S,
                    ) -> list[tuple[str, float]]:
    """Cumulative ``le`` buckets from ``width_bucket`` indexes over ``bounds``: index 0 is
    below the first bound, index i lies in [bounds[i-1], bounds[i]), index len(bounds) is at
    or above the last."""
    buckets, running = [], 0
    for i, bound in enumerate(bounds):
        running += counts.get(i, 0)
        buckets.append((floatToGoString(bound), float(running)))
    return [*buckets, ("+Inf", float(sum(counts.values())))]


def coverage(embedded: int, docs: int) -> float:
    """Share of docs with a vector (1.0 when there are no docs: a gauge is never null)."""
    ratio = share_embedded(embedded, docs)
    return 1.0 if ratio is None else ratio


class FleetCollector(Collector):
    """Reads the fleet's state from PostgreSQL on every scrape (one connection, a few
    aggregate queries under a statement timeout). When the database cannot be reached, it
    says so in ``pgfleet_database_up`` and still serves the running totals."""

    def __init__(self, database_url: str, *, policy: cache.CachePolicy | None = None,
                 connect: Callable[[], psycopg.Connection] | None = None,
                 settle_s: float = SETTLE_S):
        self._connect = connect or (lambda: db.connect(
            database_url, autocommit=True, register=False, name="pgfleet-metrics"))
        self.policy = policy or cache.CachePolicy.from_settings(Settings())
        self.settle_s = settle_s
        self.logs = LogTotals()
        self._labels: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        #: why the last scrape could not read the database (None when it could)
        self.last_error: str | None = None

    def describe(self) -> Iterator[Any]:
        return iter(())  # registering must not scrape

    def collect(self) -> Iterator[Any]:
        with self._lock:
            started = time.perf_counter()
            try:
                with self._connect() as conn, db.mapped_errors():
                    db.fetch_one(conn, "metrics_statement_timeout",
                                 {"timeout": str(STATEMENT_TIMEOUT_MS)})
                    families = list(self._read(conn))
                up = 1.0
            except (PgfleetError, psycopg.Error) as exc:
                text = str(exc).strip()
                self.last_error = text.splitlines()[0] if text else type(exc).__name__
                logger.warning("metrics: cannot read the database: %s", self.last_error)
                families, up = [], 0.0
            else:
                self.last_error = None
            families += self._log_families(self._labels)
            elapsed = time.perf_counter() - started
        yield GaugeMetricFamily("pgfleet_database_up",
                                "1 when the last scrape could read PostgreSQL", value=up)
        yield GaugeMetricFamily("pgfleet_scrape_duration_seconds",
                                "time this scrape spent reading PostgreSQL", value=elapsed)
        yield from families

    def _read(self, conn: psycopg.Connection) -> Iterator[Any]:
        self._labels = {r["id"]: [r["name"], r["version"]]
                        for r in db.fetch_all(conn, "model_versions")}
        self._read_logs(conn)
        yield from self._version_families(conn)
        yield from self._source_families(conn)
        yield from self._failure_families(conn)
        yield from self._cache_families(conn)
        yield from self._training_families(conn)

    def _read_logs(self, conn: psycopg.Connection) -> None:
        bound = db.fetch_one(conn, "metrics_log_bound", {"settle_s": self.settle_s})
        assert bound is not None
        rows = db.fetch_all(conn, "metrics_logs", {
            "after": self.logs.up_to, "up_to": bound["up_to"],
            "latency_bounds_ms": [b * 1000.0 for b in LATENCY_BUCKETS_S]})
        self.logs.add(rows, bound["up_to"])

    def _version_families(self, conn: psycopg.Connection) -> Iterator[Any]:
        rows = db.fetch_all(conn, "version_status")
        docs = GaugeMetricFamily("pgfleet_docs", "rows in the docs table")
        docs.add_metric([], float(rows[0]["docs"]) if rows else 0.0)
        yield docs
        families = {
            "active": GaugeMetricFamily(
                "pgfleet_version_active",
                "1 when the version is active (embedded for, serving or shadow)", labels=LABELS),
            "embedded": GaugeMetricFamily(
                "pgfleet_embedded_docs", "docs with a vector for the version", labels=LABELS),
            "coverage": GaugeMetricFamily(
                "pgfleet_coverage_ratio", "share of docs with a vector for the version",
                labels=LABELS),
            "pending": GaugeMetricFamily(
                "pgfleet_pending_docs", "docs waiting to be embedded for the version",
                labels=LABELS),
            "oldest": GaugeMetricFamily(
                "pgfleet_oldest_pending_age_seconds",
                "age of the oldest pending doc of the version (0 when none)", labels=LABELS),
        }
        for r in rows:
            labels = [r["name"], r["version"]]
            families["active"].add_metric(labels, 1.0 if r["active"] else 0.0)
            families["embedded"].add_metric(labels, float(r["embedded"]))
            families["coverage"].add_metric(labels, coverage(int(r["embedded"]), int(r["docs"])))
            families["pending"].add_metric(labels, float(r["pending"]))
            families["oldest"].add_metric(labels, float(r["oldest_pending_s"] or 0.0))
        yield from families.values()

    def _source_families(self, conn: psycopg.Connection) -> Iterator[Any]:
        labels = ["source", *LABELS]
        families = {
            "embedded": GaugeMetricFamily("pgfleet_source_embedded_rows",
                                          "a source's rows with chunks for the version",
                                          labels=labels),
            "chunks": GaugeMetricFamily("pgfleet_source_chunks",
                                        "a source's chunks for the version", labels=labels),
            "pending": GaugeMetricFamily("pgfleet_source_pending_rows",
                                         "a source's rows waiting to be embedded",
                                         labels=labels),
            "failed": GaugeMetricFamily("pgfleet_source_failed_rows",
                                        "a source's rows that could not be embedded "
                                        "(pgfleet source failures)", labels=labels),
            "oldest_pending_s": GaugeMetricFamily(
                "pgfleet_source_oldest_pending_age_seconds",
                "age of a source's oldest pending row (0 when none)", labels=labels),
        }
        for r in db.fetch_all(conn, "source_status"):
            values = [r["source"], r["name"], r["version"]]
            for name, family in families.items():
                family.add_metric(values, float(r[name] or 0.0))
        yield from families.values()

    def _failure_families(self, conn: psycopg.Connection) -> Iterator[Any]:
        failed = GaugeMetricFamily(
            "pgfleet_failed_docs", "docs that could not be embedded (pgfleet failures), by "
            "version and reason", labels=[*LABELS, "reason"])
        for r in db.fetch_all(conn, "metrics_failures"):
            failed.add_metric([*self._label(r["version_id"]), r["reason"]], float(r["docs"]))
        yield failed

    def _cache_families(self, conn: psycopg.Connection) -> Iterator[Any]:
        stats = cache.stats(conn, self.policy)
        entries = GaugeMetricFamily("pgfleet_cache_entries", "inference cache entries",
                                    labels=LABELS)
        prunable = GaugeMetricFamily(
            "pgfleet_cache_prunable_entries", "inference cache entries the next prune removes "
            "(unused for PGFLEET_CACHE_MAX_AGE_S, fewer than PGFLEET_CACHE_MIN_HITS hits)",
            labels=LABELS)
        ratio = GaugeMetricFamily(
            "pgfleet_cache_hit_ratio", "lookups answered from the inference cache over the "
            "last hour (embedding batches' docs and searches)", labels=LABELS)
        for v in stats["versions"]:
            labels = [v["name"], v["version"]]
            entries.add_metric(labels, float(v["entries"]))
            prunable.add_metric(labels, float(v["prunable"]))
            if v["hit_ratio"] is not None:
                ratio.add_metric(labels, v["hit_ratio"])
        yield entries
        yield prunable
        yield ratio
        yield GaugeMetricFamily("pgfleet_cache_size_bytes",
                                "the inference cache table's size on disk, indexes included",
                                value=float(stats["size_bytes"]))

    def _training_families(self, conn: psycopg.Connection) -> Iterator[Any]:
        runs = GaugeMetricFamily("pgfleet_training_runs", "training runs by task and status",
                                 labels=["task", "status"])
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for r in db.fetch_all(conn, "metrics_training_runs"):
            counts[r["task"]][r["status"]] = int(r["runs"])
        for task, by_status in sorted(counts.items()):
            for status in TRAINING_STATUSES:
                runs.add_metric([task, status], float(by_status.get(status, 0)))
        yield runs

    def _label(self, version_id: int) -> list[str]:
        return self._labels.get(version_id, ["unknown", str(version_id)])

    def _log_families(self, labels: dict[int, list[str]]) -> list[Any]:
        sizes = HistogramMetricFamily(
            "pgfleet_embed_batch_size", "docs per embedding batch", labels=LABELS)
        latency = HistogramMetricFamily(
            "pgfleet_embed_batch_latency_seconds",
            "an embedding batch's time from fetch to vectors ready (the write excluded)",
            labels=LABELS)
        hits = CounterMetricFamily(
            "pgfleet_cache_hits", "lookups answered from the inference cache", labels=LABELS)
        lookups = CounterMetricFamily(
            "pgfleet_cache_lookups", "inference cache lookups (docs of embedding batches, "
            "searches)", labels=LABELS)
        for version_id, totals in sorted(self.logs.versions.items()):
            names = labels.get(version_id, ["unknown", str(version_id)])
            if totals.batches:
                sizes.add_metric(names, size_buckets(totals.batch_sizes), float(totals.docs))
                latency.add_metric(names, latency_buckets(totals.latency_buckets),
                                   totals.latency_sum_s)
            hits.add_metric(names, float(totals.cache_hits))
            lookups.add_metric(names, float(totals.lookups))
        return [sizes, latency, hits, lookups]


def registry(database_url: str | None = None, *, collector: FleetCollector | None = None,
             **kwargs: Any) -> CollectorRegistry:
    """A registry holding only the fleet's collector (given, or made for the URL)."""
    if collector is None:
        assert database_url is not None
        collector = FleetCollector(database_url, **kwargs)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def serve(reg: CollectorRegistry, *, port: int, address: str = "127.0.0.1"):
    """Serve ``reg`` over HTTP on a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    from pgfleet.errors import ConfigurationError

    try:
        return start_http_server(port, addr=address, registry=reg)
    except OSError as exc:
        raise ConfigurationError(
            f"the metrics endpoint cannot listen on {address}:{port}: {exc.strerror or exc} "
            "(set PGFLEET_METRICS_PORT to another port, or 0 for any free one)") from None
