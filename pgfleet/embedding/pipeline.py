"""The embedding path for one batch: fetch + cache lookup, encode the misses, one write.

1. one query fetches the docs still pending for the version, their content hash, the text
   the model is given (cut to ``batching.max_chars`` of the model's window, so that a huge
   row cannot take the process down) and any cached vector (content only for misses);
2. identical texts are encoded once, shortest first; a batch whose encode fails is retried
   item by item so that one bad item cannot fail its neighbours;
3. one statement writes vectors (only for docs whose content, locked, still hashes to what
   was embedded), cache rows, hit counts, the pending-row deletes and the inference log;
4. items that failed are retried with backoff, then recorded in ``embedding_failures``
   (a permanent failure also removes the doc's vector of older content).

This module is the batch flow; keeping one item's failure from its neighbours (encoding and
writing item by item, recording failures, retrying a database that is briefly unavailable)
is :mod:`pgfleet.embedding.isolation`.

Attempts count failures and deaths only. A fetch marks the rows it starts with this pool
process's name (``started_by``); if the process dies, the worker's main process counts an
attempt for those rows (:mod:`pgfleet.embedding.deaths`). A row fetched again after such a start, or
after a failure, is a suspect: it runs alone, after the others, once the writes before it
are done, so that a doc that kills the process is the only one its deaths count against.

In a worker, step 3 runs on a background thread (``run(..., overlap=True)``): the next
batch's fetch and encode overlap this batch's write, with at most one write in flight. The
pending rows are deleted only by the write itself, so a process that dies with a write in
flight leaves them pending, and the producer republishes them (``requeue_after_s``).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg_pool import ConnectionPool

import schema
from pgfleet import db
from pgfleet.embedding.batching import (
    MAX_CHARS_PER_TOKEN,
    BatchPlan,
    chunked,
    max_chars,
    plan_batch,
)
from pgfleet.embedding.deaths import process_name
from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.isolation import (
    Failure,
    encode_isolating,
    record_failure,
    with_retry,
    write_isolating,
)
from pgfleet.embedding.writer import Writer, write_params
from pgfleet.errors import ModelLoadError, PgfleetError, UnknownModelVersion
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)

EngineLoader = Callable[[ModelSpec], Engine]

#: the last blank of a text, and the (perhaps partial) word after it
_LAST_BLANK = re.compile(r"\s\S*\Z")

@dataclass
class BatchReport:
    version_id: int
    requested: int = 0
    fetched: int = 0
    written: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    failures: list[Failure] = field(default_factory=list)
    latency_ms: float = 0.0
    fetched_ids: set[int] = field(default_factory=set)
    #: set when a write failed as a whole (its docs stay pending and are republished)
    error: PgfleetError | None = None

    #: the reports this one sums up (a run's batches, a batch's parts)
    parts: list[BatchReport] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        """Count a part. What its write decides (written, failures, latency, error) is
        summed by ``settle`` once the write is done."""
        self.parts.append(other)
        self.requested += other.requested
        self.fetched += other.fetched
        self.cache_hits += other.cache_hits
        self.model_calls += other.model_calls
        self.fetched_ids |= other.fetched_ids

    def settle(self) -> BatchReport:
        if self.parts:
            for part in self.parts:
                part.settle()
            self.written = sum(p.written for p in self.parts)
            self.failures = [f for p in self.parts for f in p.failures]
            self.latency_ms = sum(p.latency_ms for p in self.parts)
            self.error = next((p.error for p in self.parts if p.error is not None), None)
        return self


def worker_name() -> str:
    """This pool process's name, ``host:pid``, as ``started_by`` records it."""
    return process_name()


class EmbedPipeline:
    def __init__(self, pool: ConnectionPool, settings: Settings, load: EngineLoader,
                 *, name: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self.pool = pool
        self.settings = settings
        self.load = load
        self.name = name or worker_name()
        self.sleep = sleep
        self._specs: dict[int, ModelSpec] = {}
        self._checked: set[int] = set()
        #: the window (tokens) of each version's loaded engine
        self._windows: dict[int, int] = {}
        self.writer = Writer()
        self._overlap = False

    def run(self, version_id: int, doc_ids: Sequence[int], *, overlap: bool = False,
            ) -> BatchReport:
        """Embed these docs for this version, batch by batch. Unknown docs are a no-op.

        With ``overlap``, writes go to the background writer and the report's write counts
        (``written``, ``failures``, ``error``) are complete only in ``after_writes``."""
        self._overlap = overlap
        report = BatchReport(version_id)  # its parts count what they were asked
        spec = self.spec(version_id)
        if spec is None:
            raise UnknownModelVersion(
                f"model version {version_id} does not exist or is not an embedding model")
        for ids in chunked(sorted(set(doc_ids)), self.settings.batch_max_docs):
            report.add(self._batch(spec, ids))
        return report if overlap else report.settle()

    def after_writes(self, report: BatchReport, action: Callable[[BatchReport], None]) -> None:
        """Call ``action(report)`` once the report's writes are done (at once without
        overlap)."""
        if self._overlap:
            self.writer.after(lambda: action(report.settle()))
        else:
            action(report.settle())

    def unknown_docs(self, doc_ids: Sequence[int], report: BatchReport) -> set[int]:
        """The ids among these that name no doc at all (one query, only if some were not
        fetched: those are done already, in backoff, or unknown)."""
        candidates = sorted(set(doc_ids) - report.fetched_ids)
        if not candidates:
            return set()
        with db.pooled(self.pool) as conn:
            existing = {r[0] for r in conn.execute(schema.query("existing_docs"),
                                                   (candidates,))}
        return set(candidates) - existing

    def spec(self, version_id: int) -> ModelSpec | None:
        spec = self._specs.get(version_id)
        if spec is None:
            with db.pooled(self.pool) as conn:
                row = db.fetch_one(conn, "model_version_by_id", {"version_id": version_id})
            if row is None:
                return None
            if row["kind"] != "embedding":
                return None
            spec = self._specs[version_id] = ModelSpec.from_row(row)
        return spec

    def _batch(self, spec: ModelSpec, doc_ids: list[int]) -> BatchReport:
        report = BatchReport(spec.version_id, requested=len(doc_ids))
        fetch_started = time.perf_counter()
        rows = self._with_retry(lambda: self._fetch(spec, doc_ids))
        fetch_ms = (time.perf_counter() - fetch_started) * 1000.0
        if not rows:
            return report  # already done, deleted, in backoff, or never pending: a no-op
        self._log_cuts(spec, rows)
        # A doc started before without finishing was in a batch whose process died, or it
        # failed before: it may be what kills the process, so it goes alone, after the rest.
        fresh = [r for r in rows if not r["suspect"]]
        suspects = [r for r in rows if r["suspect"]]
        if fresh:
            report.add(self._process(spec, fresh, started=fetch_started, fetch_ms=fetch_ms))
        for row in suspects:
            # the writes before it finish first: if it kills the process, only it is counted
            self.writer.drain()
            if self._with_retry(functools.partial(self._start_suspect, spec, row)):
                report.add(self._process(spec, [row]))
        report.requested = len(doc_ids)
        report.fetched = len(rows)
        report.fetched_ids = {r["doc_id"] for r in rows}
        return report

    def _process(self, spec: ModelSpec, rows: list[dict[str, Any]],
                 started: float | None = None, fetch_ms: float = 0.0) -> BatchReport:
        """Plan, encode and write one batch. The logged latency runs from ``started`` (the
        fetch) to just before the write, which carries the log row itself."""
        started = time.perf_counter() if started is None else started
        report = BatchReport(spec.version_id)
        plan = plan_batch(rows)
        report.cache_hits = len(plan.hits)
        failures = [Failure(doc_id, digest, "empty content",
                            "content is empty or whitespace only; nothing to embed",
                            permanent=True)
                    for doc_id, digest in plan.empty]
        encoded: dict[bytes, np.ndarray] = {}
        encode_started = time.perf_counter()
        if plan.texts:
            encoded, encode_failures = self._encode(spec, plan)
            failures.extend(encode_failures)
            report.model_calls = len(plan.texts)
        encode_ms = (time.perf_counter() - encode_started) * 1000.0
        params = write_params(spec, plan, encoded)
        params.update(worker=self.name, batch_size=plan.batch_size,
                      cache_hits=report.cache_hits, model_calls=report.model_calls,
                      latency_ms=(time.perf_counter() - started) * 1000.0)

        def write() -> None:
            self._finish(spec, plan.batch_size, params, failures, report,
                         started=started, fetch_ms=fetch_ms, encode_ms=encode_ms)

        if self._overlap:
            self.writer.submit(write)
        else:
            write()
        return report

    def _finish(self, spec: ModelSpec, batch_size: int, params: dict[str, Any],
                failures: list[Failure], report: BatchReport, *, started: float,
                fetch_ms: float, encode_ms: float) -> None:
        """Write one batch and record its failures; never raises (a failed write leaves the
        docs pending and is logged and set on the report)."""
        write_started = time.perf_counter()
        try:
            report.written, write_failures = self._write_isolating(params)
            failures.extend(write_failures)
            for failure in failures:
                self._record_failure(spec, failure)
        except PgfleetError as exc:
            logger.error("writing %d docs for %s failed, left pending (the producer "
                         "republishes them): %s", batch_size, spec.label, exc)
            report.error = exc
            return
        except Exception as exc:  # noqa: BLE001 - a background thread must not fail silently
            logger.exception("writing %d docs for %s failed, left pending", batch_size,
                             spec.label)
            report.error = PgfleetError(f"{type(exc).__name__}: {exc}")
            return
        write_ms = (time.perf_counter() - write_started) * 1000.0
        report.failures = failures
        report.latency_ms = (time.perf_counter() - started) * 1000.0
        logger.info(
            "embedded batch version=%s docs=%d written=%d cache_hits=%d encoded=%d failed=%d "
            "stale=%d ms=%.1f fetch_ms=%.1f encode_ms=%.1f write_ms=%.1f", spec.label,
            batch_size, report.written, report.cache_hits, report.model_calls,
            len(failures), batch_size - report.written - len(failures), report.latency_ms,
            fetch_ms, encode_ms, write_ms)

    def _fetch(self, spec: ModelSpec, doc_ids: list[int]) -> list[dict[str, Any]]:
        with db.pooled(self.pool) as conn:
            return db.fetch_all(conn, "fetch_batch", {
                "version_id": spec.version_id, "doc_ids": doc_ids, "worker": self.name,
                "max_chars": self.max_chars(spec)})

    def _start_suspect(self, spec: ModelSpec, row: dict[str, Any]) -> bool:
        """Mark a suspect as started by this process; False if it is no longer pending with
        that content (done meanwhile, or changed)."""
        with db.pooled(self.pool) as conn:
            return db.fetch_one(conn, "start_suspect", {
                "doc_id": row["doc_id"], "version_id": spec.version_id,
                "hash": bytes(row["hash"]), "worker": self.name}) is not None

    def max_chars(self, spec: ModelSpec) -> int:
        """How much of a doc is fetched for this version: enough for the larger of the
        window the registry records and that of the engine loaded here."""
        window = max(spec.max_seq_length or 0, self._windows.get(spec.version_id, 0))
        return max_chars(window or None)

    def _write(self, params: dict[str, Any]) -> dict[str, Any]:
        with db.pooled(self.pool) as conn, conn.transaction():
            row = db.fetch_one(conn, "write_batch", params)
        assert row is not None
        return row

    def engine(self, spec: ModelSpec) -> Engine:
        """The version's engine, refused if its vectors would not match those stored."""
        engine = self.load(spec)
        self._windows[spec.version_id] = int(engine.max_seq_length)
        if spec.version_id not in self._checked:
            with db.pooled(self.pool) as conn:
                row = conn.execute(schema.query("stored_vector_dims"),
                                   (spec.version_id,)).fetchone()
            if row is not None and row[0] != engine.dimensions:
                raise ModelLoadError(
                    f"model version {spec.label} produces {engine.dimensions}-dimensional "
                    f"vectors but its stored vectors have {row[0]}: refusing to mix them")
            self._checked.add(spec.version_id)
        return engine

    def _write_isolating(self, params: dict[str, Any]) -> tuple[int, list[Failure]]:
        """Write the batch (retried while the database is briefly unavailable), item by
        item if PostgreSQL refuses it (:func:`~pgfleet.embedding.isolation.write_isolating`)."""
        def write(part: dict[str, Any]) -> dict[str, Any]:
            return self._with_retry(lambda: self._write(part))

        return write_isolating(write, params)

    def _encode(self, spec: ModelSpec, plan: BatchPlan,
                ) -> tuple[dict[bytes, np.ndarray], list[Failure]]:
        try:
            engine = self.engine(spec)
        except ModelLoadError as exc:
            logger.error("cannot load %s: %s", spec.label, exc)
            return {}, [Failure(d, h, "model unavailable", str(exc))
                        for h, docs in plan.docs_by_hash.items() for d in docs]
        self._log_truncation(engine, plan)
        return encode_isolating(engine, spec, plan)

    def _log_cuts(self, spec: ModelSpec, rows: list[dict[str, Any]]) -> None:
        cut = [r["doc_id"] for r in rows if r["cut"]]
        if cut:
            logger.info("cut docs %s to their first %d characters at fetch (the model reads "
                        "at most %s tokens of them)", cut, self.max_chars(spec),
                        self._windows.get(spec.version_id) or spec.max_seq_length)

    def _log_truncation(self, engine: Engine, plan: BatchPlan) -> None:
        limit = engine.max_seq_length
        # a token covers at least one character, so only long texts can exceed the window;
        # texts are cut at fetch time, so counting their tokens is bounded too
        long = [(t, h) for t, h in zip(plan.texts, plan.text_hashes, strict=True) if len(t) > limit - 2]
        if not long:
            return
        counts = engine.token_counts([t for t, _ in long])
        for (text, digest), tokens in zip(long, counts, strict=True):
            if tokens > limit:
                logger.info("truncated docs %s from %d to %d tokens (the model's window)",
                            plan.docs_by_hash[digest], tokens, limit)
            if digest in plan.cut and not _cut_after_window(engine, text, limit):
                logger.warning(
                    "docs %s reach the cut at %d characters before the model's window of %d "
                    "tokens is full (long runs of blanks or controls, or very long words): "
                    "their vector is of those characters only", plan.docs_by_hash[digest],
                    len(text), limit)

    def _record_failure(self, spec: ModelSpec, failure: Failure) -> None:
        record_failure(self.pool, self.settings, spec, failure)

    def _with_retry(self, action: Callable[[], Any]) -> Any:
        return with_retry(action, self.sleep)


def _cut_after_window(engine: Engine, text: str, window: int) -> bool:
    """Whether a text cut at fetch time fills the model's window before its last (perhaps
    partial) word, so that the cut changed nothing the model reads. Without any blank, the
    last ``MAX_CHARS_PER_TOKEN`` characters stand for that word."""
    last_blank = _LAST_BLANK.search(text)
    head = text[:last_blank.start()] if last_blank else text[:-MAX_CHARS_PER_TOKEN]
    return engine.token_counts([head])[0] > window

