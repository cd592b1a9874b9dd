"""The SQL safety guard: check SQL (parse, one statement, read-only allow-list, EXPLAIN), then
run it read-only with a timeout and a row cap.

Defence in depth: :func:`check_sql` refuses what is not plainly a read-only query, and
:func:`run_readonly` runs what passed as a role that can only SELECT, in a read-only
transaction that is always rolled back, so a query that fooled the parser still cannot write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from workers.errors import SqlRejected
from workers.text2sql import policy, readonly
from workers.text2sql.readonly import Result

__all__ = ["Result", "SqlRejected", "Verdict", "check_sql", "run_readonly"]

EXPLAIN_TIMEOUT_MS = 5000


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    sql: str = ""


def check_sql(sql: str, conn: psycopg.Connection | None = None, *,
              timeout_ms: int = EXPLAIN_TIMEOUT_MS) -> Verdict:
    """Whether ``sql`` may run. With ``conn``, PostgreSQL also plans it (EXPLAIN, never run)
    as the reader role, which catches unknown tables and columns and missing grants."""
    decision = policy.decide(sql)
    if not decision.ok or conn is None:
        return Verdict(decision.ok, decision.reasons, decision.sql)
    problem = readonly.explain(conn, decision.sql, timeout_ms=timeout_ms)
    if problem:
        return Verdict(False, [problem], decision.sql)
    return Verdict(True, [], decision.sql)


def run_readonly(conn: psycopg.Connection, sql: str, *, timeout_ms: int = 5000,
                 row_cap: int = 1000) -> Result:
    """Check ``sql``, then run it read-only: at most ``row_cap`` rows (``truncated`` says
    whether there were more), cancelled after ``timeout_ms``
    (:class:`~workers.errors.QueryTimeout`). Refused SQL raises
    :class:`~workers.errors.SqlRejected` with the reasons."""
    if timeout_ms < 1 or row_cap < 1:
        raise ValueError("timeout_ms and row_cap must be at least 1")
    verdict = check_sql(sql)
    if not verdict.ok:
        raise SqlRejected(verdict.reasons)
    return readonly.execute_readonly(conn, verdict.sql, timeout_ms=timeout_ms, row_cap=row_cap)
