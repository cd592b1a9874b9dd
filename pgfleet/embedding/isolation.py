"""One item's failure, kept from its neighbours and recorded against it alone.

The batch flow (:mod:`pgfleet.embedding.pipeline`) hands its encodes and writes here:

* an encode that fails for a batch is retried item by item, and each text that still fails
  (or comes back with the wrong shape, NaN or infinite values) is a :class:`Failure` of the
  docs that have it;
* a write PostgreSQL refuses is written item by item, so that one item the database rejects
  does not fail the others;
* a failure spends an attempt (:func:`record_failure`): the doc is retried with backoff, or
  at the attempt limit (or at once, when permanent) recorded in ``embedding_failures``;
* a database that is briefly unavailable is tried again with pauses (:func:`with_retry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg_pool import ConnectionPool

import schema
from pgfleet import db
from pgfleet.embedding.batching import BatchPlan, backoff_s
from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.writer import single_items
from pgfleet.errors import DatabaseRejected, PgfleetError, RetryableError
from pgfleet.settings import Settings

# the pipeline's own logger: these lines are part of its story, under its name
logger = logging.getLogger("pgfleet.embedding.pipeline")

#: how often a write is tried when the database is briefly unavailable, and the pauses
WRITE_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Failure:
    doc_id: int
    digest: bytes
    reason: str
    error: str
    permanent: bool = False


def with_retry(action: Callable[[], Any], sleep: Callable[[float], None]) -> Any:
    """``action()``, tried again after each pause of :data:`WRITE_RETRY_PAUSES_S` while it
    raises a :class:`~pgfleet.errors.RetryableError`; the last one is raised."""
    for pause in (*WRITE_RETRY_PAUSES_S, None):
        try:
            return action()
        except RetryableError as exc:
            if pause is None:
                raise
            logger.warning("%s; retrying in %.1f s", exc, pause)
            sleep(pause)
    raise AssertionError("unreachable")


def encode_isolating(engine: Engine, spec: ModelSpec, plan: BatchPlan,
                     ) -> tuple[dict[bytes, np.ndarray], list[Failure]]:
    """The plan's texts encoded in one call; if that fails, one by one, so that one bad
    text fails only the docs that have it."""
    try:
        vectors = engine.encode(plan.texts)
        check_vectors(vectors, len(plan.texts), engine.dimensions)
        return dict(zip(plan.text_hashes, vectors, strict=True)), []
    except Exception as exc:  # noqa: BLE001 - isolate the bad item below
        logger.warning("encoding a batch of %d for %s failed (%s); retrying item by item",
                       len(plan.texts), spec.label, exc)
    encoded: dict[bytes, np.ndarray] = {}
    failures: list[Failure] = []
    for text, digest in zip(plan.texts, plan.text_hashes, strict=True):
        try:
            vector = engine.encode([text])
            check_vectors(vector, 1, engine.dimensions)
            encoded[digest] = vector[0]
        except Exception as exc:  # noqa: BLE001 - recorded per item
            failures.extend(Failure(d, digest, "model error", f"{type(exc).__name__}: {exc}")
                            for d in plan.docs_by_hash[digest])
    return encoded, failures


def write_isolating(write: Callable[[dict[str, Any]], dict[str, Any]],
                    params: dict[str, Any]) -> tuple[int, list[Failure]]:
    """Write the batch with ``write`` (one ``write_batch``, retried); if PostgreSQL refuses
    it, write item by item so that one item the database rejects does not fail its
    neighbours. Returns the docs written and the items refused."""
    try:
        return int(write(params)["written"]), []
    except DatabaseRejected as exc:
        if len(params["doc_ids"]) <= 1:
            return 0, [Failure(d, h, "write error", str(exc))
                       for d, h in zip(params["doc_ids"], params["hashes"], strict=True)]
        logger.warning("writing a batch of %d was refused (%s); writing item by item",
                       len(params["doc_ids"]), exc)
    written = 0
    failures: list[Failure] = []
    for item in single_items(params):
        count, failed = write_isolating(write, item)
        written += count
        failures.extend(failed)
    return written, failures


def record_failure(pool: ConnectionPool, settings: Settings, spec: ModelSpec,
                   failure: Failure) -> None:
    """Spend an attempt of the failed doc: retried after a backoff, or given up on and
    recorded (``record_failure``)."""
    with db.pooled(pool) as conn, conn.transaction():
        attempts_row = conn.execute(schema.query("pending_attempts"),
                                    (failure.doc_id, spec.version_id)).fetchone()
        attempt = (attempts_row[0] if attempts_row else 0) + 1  # this failure spends one
        retry_in_s = backoff_s(attempt, base_s=settings.retry_base_s, max_s=settings.retry_max_s)
        row = db.fetch_one(conn, "record_failure", {
            "doc_id": failure.doc_id, "version_id": spec.version_id, "hash": failure.digest,
            "reason": failure.reason, "error": failure.error[:2000],
            "retry_in_s": retry_in_s, "max_attempts": settings.max_attempts,
            "permanent": failure.permanent})
    if row and row["given_up"]:
        logger.error("doc %s failed for %s after %s attempt(s), recorded: %s: %s",
                     failure.doc_id, spec.label, row["attempts"], failure.reason, failure.error)
    elif row and row["retried"]:
        logger.warning("doc %s failed for %s (attempt %s), retrying in %.1f s: %s",
                       failure.doc_id, spec.label, row["attempts"], retry_in_s, failure.error)


def check_vectors(vectors: np.ndarray, count: int, dims: int) -> None:
    if vectors.shape != (count, dims):
        raise PgfleetError(f"model returned shape {vectors.shape}, expected {(count, dims)}")
    if not np.isfinite(vectors).all():
        raise PgfleetError("model returned NaN or infinite values")
