"""The SQL safety guard: check SQL (parse, one statement, the allow-list, EXPLAIN), then run
it read-only with a timeout, a row cap and a bound in bytes.

Defence in depth: :func:`check_sql` refuses what is not plainly a read-only query calling
allowed functions, and :func:`run_readonly` runs what passed in a session of the reader
login (:func:`~pgfleet.text2sql.readonly.connect_reader`), whose session user can only
SELECT what it was granted, in a read-only transaction that is always rolled back, so a
query that fooled the checker still cannot write, nor reach more than the reader may.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgfleet.errors import ResultTooLarge, SqlRejected
from pgfleet.text2sql import policy, readonly
from pgfleet.text2sql.readonly import DEFAULT_MAX_BYTES, Reader, Result, connect_reader

__all__ = ["DEFAULT_MAX_BYTES", "Reader", "Result", "ResultTooLarge", "SqlRejected", "Verdict",
           "check_sql", "connect_reader", "run_readonly"]

EXPLAIN_TIMEOUT_MS = 5000


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    sql: str = ""


def check_sql(sql: str, reader: Reader | None = None, *,
              timeout_ms: int = EXPLAIN_TIMEOUT_MS) -> Verdict:
    """Whether ``sql`` may run. With ``reader`` (a reader session), PostgreSQL also plans it
    (EXPLAIN, never run) as the reader, which catches unknown tables and columns and missing
    grants."""
    decision = policy.decide(sql)
    if not decision.ok or reader is None:
        return Verdict(decision.ok, decision.reasons, decision.sql)
    problem = readonly.explain(reader, decision.sql, timeout_ms=timeout_ms)
    if problem:
        return Verdict(False, [problem], decision.sql)
    return Verdict(True, [], decision.sql)


def run_readonly(reader: Reader, sql: str, *, timeout_ms: int = 5000, row_cap: int = 1000,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> Result:
    """Check ``sql``, then run it read-only in the reader session: at most ``row_cap`` rows
    (``truncated`` says whether there were more), at most ``max_bytes`` of them
    (:class:`~pgfleet.errors.ResultTooLarge` past that), cancelled after ``timeout_ms``
    (:class:`~pgfleet.errors.QueryTimeout`). Refused SQL raises
    :class:`~pgfleet.errors.SqlRejected` with the reasons."""
    if timeout_ms < 1 or row_cap < 1 or max_bytes < 1:
        raise ValueError("timeout_ms, row_cap and max_bytes must be at least 1")
    verdict = check_sql(sql)
    if not verdict.ok:
        raise SqlRejected(verdict.reasons)
    return readonly.execute_readonly(reader, verdict.sql, timeout_ms=timeout_ms,
                                     row_cap=row_cap, max_bytes=max_bytes)
