"""SQL from a question: beam search, then execution-guided choice.

The model proposes ``beams`` candidates, best-scored first. :func:`choose` checks them in
that order with the guard (exactly one statement, the allow-list, then EXPLAIN in the reader
session) and takes the first that passes; the answer says which beam was chosen and
why each one before it was rejected. When none passes, no SQL is returned at all: generated
SQL that fails the guard never leaves this module.

:func:`choose` is pure (the check is a parameter), :func:`generate_sql` wires the model, the
live schema, the guard and the ``inference_logs`` row.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from pgfleet.errors import PgfleetError
from pgfleet.models import inference_logs, routing
from pgfleet.models.versions import Version

if TYPE_CHECKING:
    from pgfleet.text2sql.readonly import Reader

logger = logging.getLogger(__name__)

DEFAULT_BEAMS = 4
NO_CANDIDATE = "no candidate passed the guard"


@dataclass
class Rejected:
    beam: int
    sql: str
    reasons: list[str]


@dataclass
class Choice:
    sql: str | None            # None: no candidate passed
    beam: int | None           # which candidate (0 = the best-scored)
    candidates: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sql is not None

    @property
    def why(self) -> str:
        if self.sql is None:
            return f"{NO_CANDIDATE}: all {len(self.candidates)} beam(s) were rejected"
        if self.beam == 0:
            return "beam 0 (the best-scored) passed the guard"
        return (f"beam {self.beam} is the first that passed the guard; beams "
                f"{', '.join(str(r.beam) for r in self.rejected)} were rejected")


def choose(candidates: Sequence[str], check: Callable[[str], Any],
           finish: Callable[[str], str] | None = None) -> Choice:
    """The first candidate that ``check`` passes (an object with ``ok``, ``reasons`` and the
    checked ``sql``, as :func:`~pgfleet.text2sql.guard.check_sql` returns), and why each
    earlier one failed. Empty or repeated candidates are rejected without a check.
    ``finish`` turns the model's text into SQL first (the values put back, see
    :func:`~pgfleet.text2sql.values.unmask_sql`); a ValueError it raises rejects the beam."""
    finished: list[str | ValueError] = []
    for sql in candidates:
        try:
            finished.append(finish(sql) if finish is not None else sql)
        except ValueError as exc:
            finished.append(exc)
    choice = Choice(None, None, [c if isinstance(c, str) else raw
                                 for c, raw in zip(finished, candidates, strict=True)])
    seen: dict[str, int] = {}
    for beam, sql in enumerate(choice.candidates):
        if isinstance(finished[beam], ValueError):
            choice.rejected.append(Rejected(beam, sql, [str(finished[beam])]))
            continue
        text = sql.strip()
        if not text:
            choice.rejected.append(Rejected(beam, sql, ["The model produced no SQL."]))
            continue
        if text in seen:
            choice.rejected.append(Rejected(beam, sql, [f"The same SQL as beam {seen[text]}."]))
            continue
        seen[text] = beam
        verdict = check(text)
        if verdict.ok:
            choice.sql, choice.beam = (verdict.sql or text), beam
            return choice
        choice.rejected.append(Rejected(beam, sql, list(verdict.reasons) or ["Rejected."]))
    return choice


# ------------------------------------------------------------------------- versions
def route(conn: psycopg.Connection, ref: str | int | None = None,
          key: str | None = None) -> Version:
    """The version that answers: ``ref`` when given (an empty one is none); else one of the
    serving versions of the active text2sql model, by its split: sticky for a ``key`` (a
    user or session id), random without one (:func:`pgfleet.models.routing.route`)."""
    return routing.route(conn, "text2sql", None if ref == "" else ref, key)


@functools.lru_cache(maxsize=2)
def cached_model(artifact: str):
    """The model saved at ``artifact``, loaded once per process (two at most)."""
    from pgfleet.text2sql.model import load

    return load(artifact)


# ------------------------------------------------------------------------- generation
@dataclass
class Answer:
    question: str
    version: str | None
    version_id: int | None
    sql: str | None
    beam: int | None
    why: str
    candidates: list[str]
    rejected: list[dict[str, Any]]
    latency_ms: float
    log_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.sql is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def answer_for(question: str, choice: Choice, latency_ms: float,
               version: Version | None) -> Answer:
    return Answer(question, version.label if version else None,
                  version.id if version else None, choice.sql, choice.beam, choice.why,
                  choice.candidates, [asdict(r) for r in choice.rejected], round(latency_ms, 1))


def generate_sql(conn: psycopg.Connection, question: str, *, reader: Reader,
                 version: str | int | None = None, beams: int = DEFAULT_BEAMS, model=None,
                 log: bool = True, key: str | None = None) -> Answer:
    """Beam search with the text2sql version (``version``, else one routed by the A/B split
    of the active model, sticky for ``key``, see :func:`route`; ``model``, a
    :class:`~pgfleet.text2sql.model.Seq2Seq`, replaces it), then the first beam that passes
    the guard. ``conn``, the fleet's connection in autocommit mode, routes, reads the schema
    and logs to ``inference_logs``; ``reader``, a session of the reader login on the same
    database, looks the question's values up and checks the beams."""
    from pgfleet.text2sql.guard import check_sql
    from pgfleet.text2sql.inputs import prepare
    from pgfleet.text2sql.model import generate
    from pgfleet.text2sql.readonly import check_same_database
    from pgfleet.text2sql.schema_text import introspect
    from pgfleet.text2sql.values import unmask_sql

    if not isinstance(question, str) or not question.strip():
        raise PgfleetError("the question must be a non-empty string")
    if isinstance(beams, bool) or not isinstance(beams, int) or not 1 <= beams <= 16:
        raise PgfleetError(f"beams must be an integer from 1 to 16, not {beams!r}")
    check_same_database(reader, conn)
    started = time.perf_counter()
    spec = None
    if model is None:
        spec = route(conn, version, key)
        model = cached_model(spec.artifact)
    prepared = prepare(question, introspect(conn), reader,
                       mask_values=getattr(model, "mask_values", False),
                       link_columns=getattr(model, "link_columns", False))
    candidates = generate(model, [prepared.input], beams=beams)[0]
    choice = choose(candidates, lambda sql: check_sql(sql, reader),
                    lambda text: unmask_sql(text, prepared.values))
    answer = answer_for(question, choice, (time.perf_counter() - started) * 1000, spec)
    if log:
        answer.log_id = log_request(conn, answer, key)
    logger.info("text2sql answer", extra={"version": answer.version, "beam": answer.beam,
                                          "latency_ms": answer.latency_ms, "ok": answer.ok})
    return answer


def log_request(conn: psycopg.Connection, answer: Answer, key: str | None = None) -> int:
    """The answer's row in ``inference_logs``: the chosen beam, or why there is none; the
    request is told apart by its key, else by its question."""
    return inference_logs.write(conn, inference_logs.row(
        "text2sql", version_id=answer.version_id, assigned_version_id=answer.version_id,
        latency_ms=answer.latency_ms, worker=socket.gethostname(),
        key=key if key is not None else answer.question,
        results=None if answer.beam is None else [answer.beam],
        error=None if answer.ok else NO_CANDIDATE))
