"""The embedding path of a source's rows: start, read, chunk, cache, encode, replace.

1. the rows' pending records are marked started (their hash and the time they were queued
   are kept), then a second statement, with a newer snapshot, reads their text through the
   source's view; a key whose row is gone has its pending row and chunks removed;
2. each text is cut into chunks (:mod:`pgfleet.sources.chunking`) in the model's tokenizer;
3. chunks whose exact embedded text is in the inference cache take its vector; the others are
   encoded in one call (item by item if that fails, so that one bad row fails alone);
4. one transaction locks the pending records still as they were started (a row whose
   change the producer queued since, or that was deleted, is left to its newer job; a
   change still in the change log queues the row again once taken; a delete of a locked
   row, or a take of its change, waits for the commit), removes those rows' old chunks,
   inserts the new ones, the cache rows and the log row, and deletes the pending records;
5. a failure spends an attempt of its row: retried with backoff, or recorded in
   ``source_failures`` (a blank text at once), its chunks of older text removed.

A row fetched again after an attempt (a failure, or a start that never finished) runs
alone, after the others, so that a row that kills the process is the only one its deaths
count against (the producer counts those: ``requeue_stale_sources``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import schema
from pgfleet import db
from pgfleet.embedding.batching import backoff_s
from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.isolation import check_vectors, with_retry
from pgfleet.errors import DatabaseRejected, ModelLoadError, UnknownModelVersion
from pgfleet.sources.catalog import Source, by_id, composed
from pgfleet.sources.chunking import Chunk, Chunker

logger = logging.getLogger(__name__)

#: a row's text is read up to this many characters (a huge row cannot take the process
#: down); what lies beyond is not embedded, and a warning says so
MAX_ROW_CHARS = 1_000_000
#: rows read, chunked and written together
ROWS_PER_BATCH = 32


@dataclass
class RowFailure:
    row_key: str
    hash: bytes
    queued_at: Any
    reason: str
    error: str
    permanent: bool = False
    #: the attempt this failure spends
    attempt: int = 1
    #: the hash of the text that failed (the pending row's ``hash`` may be of another)
    tried: bytes = b""


@dataclass
class SourceReport:
    source_id: int
    version_id: int
    requested: int = 0
    rows: int = 0
    written: int = 0
    chunks: int = 0
    cache_hits: int = 0
    model_calls: int = 0
    gone: int = 0
    failures: list[RowFailure] = field(default_factory=list)
    #: the source's name and the version's label (what Flower shows of a task's result)
    source: str = ""
    version: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version,
                "source_id": self.source_id, "version_id": self.version_id,
                "requested": self.requested, "rows": self.rows, "written": self.written,
                "chunks": self.chunks, "cache_hits": self.cache_hits,
                "model_calls": self.model_calls, "gone": self.gone,
                "failed": len(self.failures)}


@dataclass
class _Row:
    key: str
    queued_hash: bytes
    queued_at: Any
    attempts: int
    body: str = ""
    hash: bytes = b""
    chunks: list[Chunk] = field(default_factory=list)


class SourcePipeline:
    """Embeds source rows for a version. ``spec`` and ``engine`` are the embedding path's
    own (:class:`pgfleet.embedding.pipeline.EmbedPipeline`): one model loaded per process,
    refused if its vectors would not match those stored."""

    def __init__(self, pool, settings, *, spec: Callable[[int], ModelSpec | None],
                 engine: Callable[[ModelSpec], Engine], name: str,
                 sleep: Callable[[float], None] = time.sleep):
        self.pool = pool
        self.settings = settings
        self.spec = spec
        self.engine = engine
        self.name = name
        self.sleep = sleep
        self._sources: dict[int, Source] = {}
        self._chunkers: dict[tuple[int, int], Chunker] = {}

    def source(self, source_id: int) -> Source | None:
        source = self._sources.get(source_id)
        if source is None:
            with db.pooled(self.pool) as conn:
                source = by_id(conn, source_id)
            if source is not None:
                self._sources[source_id] = source
        return source

    def run(self, source_id: int, version_id: int, keys: Sequence[str]) -> SourceReport:
        """Embed these rows of the source for the version. Keys not pending are a no-op."""
        report = SourceReport(source_id, version_id, requested=len(keys))
        source = self.source(source_id)
        if source is None:
            raise UnknownModelVersion(f"source {source_id} does not exist (dropped?)")
        spec = self.spec(version_id)
        if spec is None:
            raise UnknownModelVersion(
                f"model version {version_id} does not exist or is not an embedding model")
        report.source, report.version = source.name, spec.label
        ordered = sorted(set(keys))
        for at in range(0, len(ordered), ROWS_PER_BATCH):
            self._batch(source, spec, ordered[at:at + ROWS_PER_BATCH], report)
        return report

    def _batch(self, source: Source, spec: ModelSpec, keys: list[str],
               report: SourceReport) -> None:
        rows = self._retry(lambda: self._start(source, spec, keys, report))
        report.rows += len(rows)
        fresh = [r for r in rows if r.attempts == 0]
        if fresh:
            self._process(source, spec, fresh, report)
        for row in rows:
            if row.attempts > 0:  # a suspect: alone, after the others
                self._process(source, spec, [row], report)

    def _start(self, source: Source, spec: ModelSpec, keys: list[str],
               report: SourceReport) -> list[_Row]:
        with db.pooled(self.pool) as conn:
            started = conn.execute(schema.query("start_source_rows"), {
                "source_id": source.id, "version_id": spec.version_id, "keys": keys,
                "worker": self.name}).fetchall()
            if not started:
                return []
            rows = {k: _Row(k, bytes(h), q, a) for k, h, q, a in started}
            texts = conn.execute(composed(source, "source_texts"), {
                "keys": list(rows), "max_chars": MAX_ROW_CHARS}).fetchall()
            seen = set()
            for key, body, cut, digest in texts:
                row = rows[key]
                row.body, row.hash = body or "", bytes(digest)
                seen.add(key)
                if cut:
                    logger.warning("source %s row %s: its text is longer than %d characters; "
                                   "only those are embedded", source.name, key, MAX_ROW_CHARS)
            gone = [k for k in rows if k not in seen]
            if gone:  # deleted with triggers off: nothing to embed, nothing to keep
                conn.execute(schema.query("forget_source_rows"), {
                    "source_id": source.id, "version_id": spec.version_id, "keys": gone})
                conn.commit()
                report.gone += len(gone)
        return [rows[k] for k in rows if k in seen]

    def _process(self, source: Source, spec: ModelSpec, rows: list[_Row],
                 report: SourceReport) -> None:
        started = time.perf_counter()
        failures: list[RowFailure] = []
        try:
            engine = self.engine(spec)
        except ModelLoadError as exc:
            logger.error("cannot load %s: %s", spec.label, exc)
            self._record(source, spec, [self._failure(r, "model unavailable", str(exc))
                                        for r in rows], report)
            return
        chunker = self._chunker(source, spec, engine)
        ready: list[_Row] = []
        for row in rows:
            if not row.body.strip():
                failures.append(self._failure(row, "empty text", "the row's text is empty or "
                                              "whitespace only; nothing to embed",
                                              permanent=True))
                continue
            try:
                row.chunks = chunker.chunks(row.body)
            except Exception as exc:  # noqa: BLE001 - recorded against the row
                failures.append(self._failure(row, "chunking error",
                                              f"{type(exc).__name__}: {exc}"))
                continue
            ready.append(row)
        vectors, hits, misses, encode_failures = self._vectors(spec, engine, ready)
        failed = {f.row_key for f in encode_failures}
        failures.extend(encode_failures)
        ready = [r for r in ready if r.key not in failed]
        if ready:
            params = self._params(source, spec, ready, vectors, hits, misses)
            params["latency_ms"] = (time.perf_counter() - started) * 1000.0
            failures.extend(self._write_isolating(source, params, ready, report))
        self._record(source, spec, failures, report)
        logger.info("embedded source batch source=%s version=%s rows=%d written=%d chunks=%d "
                    "cache_hits=%d encoded=%d failed=%d ms=%.1f", source.name, spec.label,
                    len(rows), report.written, report.chunks, len(hits), len(misses),
                    len(failures), (time.perf_counter() - started) * 1000.0)

    def _chunker(self, source: Source, spec: ModelSpec, engine: Engine) -> Chunker:
        chunker = self._chunkers.get((source.id, spec.version_id))
        if chunker is None:
            specials = engine.token_counts([""])[0]

            def count(text: str) -> int:
                return engine.token_counts([text])[0] - specials

            chunker = self._chunkers[(source.id, spec.version_id)] = Chunker(
                source.chunking, count=count, window=engine.max_seq_length - specials,
                chunk_tokens=source.chunk_tokens, overlap=source.overlap)
        return chunker

    def _vectors(self, spec: ModelSpec, engine: Engine, rows: list[_Row],
                 ) -> tuple[dict[bytes, np.ndarray], set[bytes], dict[bytes, np.ndarray],
                            list[RowFailure]]:
        """A vector per distinct embedded text: from the cache, else encoded."""
        texts: dict[bytes, str] = {}
        for row in rows:
            for chunk in row.chunks:
                texts.setdefault(_digest(chunk.embedded), chunk.embedded)
        if not texts:
            return {}, set(), {}, []
        with db.pooled(self.pool) as conn:
            cached = {bytes(h): np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v,
                                           dtype=np.float32)
                      for h, v in conn.execute(schema.query("cached_vectors"), {
                          "version_id": spec.version_id, "hashes": list(texts)})}
        vectors = dict(cached)
        todo = [h for h in texts if h not in cached]
        misses: dict[bytes, np.ndarray] = {}
        failures: list[RowFailure] = []
        if todo:
            try:
                encoded = engine.encode([texts[h] for h in todo])
                check_vectors(encoded, len(todo), engine.dimensions)
                misses = dict(zip(todo, encoded, strict=True))
            except Exception as exc:  # noqa: BLE001 - isolate the bad row below
                logger.warning("encoding %d chunks for %s failed (%s); retrying row by row",
                               len(todo), spec.label, exc)
                misses, failures = self._encode_by_row(engine, rows, texts, cached)
        vectors.update(misses)
        return vectors, set(cached), misses, failures

    def _encode_by_row(self, engine: Engine, rows: list[_Row], texts: dict[bytes, str],
                       cached: dict[bytes, np.ndarray],
                       ) -> tuple[dict[bytes, np.ndarray], list[RowFailure]]:
        misses: dict[bytes, np.ndarray] = {}
        failures: list[RowFailure] = []
        for row in rows:
            todo = list(dict.fromkeys(h for h in (_digest(c.embedded) for c in row.chunks)
                                      if h not in cached and h not in misses))
            if not todo:
                continue
            try:
                encoded = engine.encode([texts[h] for h in todo])
                check_vectors(encoded, len(todo), engine.dimensions)
                misses.update(zip(todo, encoded, strict=True))
            except Exception as exc:  # noqa: BLE001 - recorded against the row
                failures.append(self._failure(row, "model error",
                                              f"{type(exc).__name__}: {exc}"))
        return misses, failures

    def _params(self, source: Source, spec: ModelSpec, rows: list[_Row],
                vectors: dict[bytes, np.ndarray], hits: set[bytes],
                misses: dict[bytes, np.ndarray]) -> dict[str, Any]:
        chunks = [(row, chunk, _digest(chunk.embedded)) for row in rows for chunk in row.chunks]
        used = {d for _, _, d in chunks}
        return {
            "source_id": source.id, "version_id": spec.version_id,
            "text_config": source.text_config,
            "locks": {"keys": [r.key for r in rows], "hashes": [r.queued_hash for r in rows],
                      "queued": [r.queued_at for r in rows]},
            "keys": [r.key for r, _, _ in chunks],
            "chunks": [c.index for _, c, _ in chunks],
            "contents": [c.text for _, c, _ in chunks],
            "starts": [c.start for _, c, _ in chunks],
            "ends": [c.end for _, c, _ in chunks],
            "headings": [c.heading for _, c, _ in chunks],
            "hashes": [r.hash for r, _, _ in chunks],
            "vectors": [vectors[d] for _, _, d in chunks],
            "miss_hashes": [h for h in misses if h in used],
            "miss_vectors": [v for h, v in misses.items() if h in used],
            "hit_hashes": sorted(h for h in hits if h in used),
            "batch_size": len(rows), "cache_hits": len(hits & used),
            "model_calls": len(misses), "worker": self.name,
        }

    def _write_isolating(self, source: Source, params: dict[str, Any], rows: list[_Row],
                         report: SourceReport) -> list[RowFailure]:
        try:
            self._retry(lambda: self._write(params, report))
            return []
        except DatabaseRejected as exc:
            if len(rows) == 1:
                return [self._failure(rows[0], "write error", str(exc))]
            logger.warning("writing %d rows of source %s was refused (%s); writing row by row",
                           len(rows), source.name, exc)
        failures: list[RowFailure] = []
        for row in rows:
            failures.extend(self._write_isolating(source, _only(params, row.key), [row],
                                                  report))
        return failures

    def _write(self, params: dict[str, Any], report: SourceReport) -> None:
        locks = params["locks"]
        with db.pooled(self.pool) as conn, conn.transaction():
            locked = [r[0] for r in conn.execute(schema.query("lock_source_rows"), {
                "source_id": params["source_id"], "version_id": params["version_id"],
                **locks})]
            if not locked:
                return
            live = set(locked)
            keep = [i for i, k in enumerate(params["keys"]) if k in live]
            query = dict(params, rows=locked)
            for name in ("keys", "chunks", "contents", "starts", "ends", "headings", "hashes",
                         "vectors"):
                query[name] = [params[name][i] for i in keep]
            query.pop("locks")
            conn.execute(schema.query("delete_source_chunks"), query)
            row = conn.execute(schema.query("replace_source_chunks"), query).fetchone()
        assert row is not None
        report.written += len(locked)
        report.chunks += int(row[0])
        report.cache_hits += params["cache_hits"]
        report.model_calls += params["model_calls"]

    def _record(self, source: Source, spec: ModelSpec, failures: list[RowFailure],
                report: SourceReport) -> None:
        for failure in failures:
            report.failures.append(failure)
            retry_in_s = backoff_s(failure.attempt, base_s=self.settings.retry_base_s,
                                   max_s=self.settings.retry_max_s)
            with db.pooled(self.pool) as conn, conn.transaction():
                row = db.fetch_one(conn, "record_source_failure", {
                    "source_id": source.id, "version_id": spec.version_id,
                    "row_key": failure.row_key, "hash": failure.hash,
                    "tried_hash": failure.tried or failure.hash,
                    "queued_at": failure.queued_at, "reason": failure.reason,
                    "error": failure.error[:2000], "permanent": failure.permanent,
                    "max_attempts": self.settings.max_attempts, "retry_in_s": retry_in_s})
            if row and row["given_up"]:
                logger.error("source %s row %s failed for %s after %s attempt(s), recorded: "
                             "%s: %s", source.name, failure.row_key, spec.label,
                             row["attempts"], failure.reason, failure.error)
            elif row and row["retried"]:
                logger.warning("source %s row %s failed for %s (attempt %s), retrying: %s",
                               source.name, failure.row_key, spec.label, row["attempts"],
                               failure.error)

    @staticmethod
    def _failure(row: _Row, reason: str, error: str, *, permanent: bool = False) -> RowFailure:
        return RowFailure(row.key, row.queued_hash, row.queued_at, reason, error, permanent,
                          attempt=row.attempts + 1, tried=row.hash)

    def _retry(self, action: Callable[[], Any]) -> Any:
        return with_retry(action, self.sleep)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _only(params: dict[str, Any], key: str) -> dict[str, Any]:
    """One row's part of a write's parameters."""
    keep = [i for i, k in enumerate(params["keys"]) if k == key]
    locks = params["locks"]
    at = locks["keys"].index(key)
    out = dict(params, locks={name: [values[at]] for name, values in locks.items()},
               batch_size=1)
    for name in ("keys", "chunks", "contents", "starts", "ends", "headings", "hashes",
                 "vectors"):
        out[name] = [params[name][i] for i in keep]
    return out
