"""Running checked SQL so that even SQL that fooled the checker cannot write or linger.

Every statement here runs inside one transaction that is always rolled back, and that is:

* read-only (``BEGIN READ ONLY``, verified before the query runs);
* as the role ``pgfleet_reader`` (``SET LOCAL ROLE``), which can only SELECT what it was granted;
* limited by ``statement_timeout`` and ``lock_timeout`` (``set_config(..., is_local => true)``);
* sent with the extended query protocol, which PostgreSQL refuses for more than one statement
  (``COMMIT; DELETE ...`` cannot end the transaction and write outside it).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

import schema
from workers.errors import ConfigurationError, DatabaseUnavailable, QueryTimeout, SqlRejected

logger = logging.getLogger(__name__)

READER_ROLE = "pgfleet_reader"
CURSOR_NAME = "pgfleet_text2sql"


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float


@contextlib.contextmanager
def reader_transaction(conn: psycopg.Connection, *, timeout_ms: int) -> Iterator[None]:
    """A read-only transaction as the reader role with timeouts; always rolled back."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ConfigurationError("read-only queries need a connection with no transaction open")
    try:
        if conn.autocommit:
            conn.execute(schema.query("text2sql_begin_read_only"))
        # without autocommit psycopg has just sent BEGIN; this makes it read-only either way
        conn.execute(schema.query("text2sql_read_only"))
        conn.execute(schema.query("text2sql_limits"),
                     {"statement_timeout": f"{int(timeout_ms)}ms",
                      "lock_timeout": f"{int(timeout_ms)}ms"})
        _become_reader(conn)
        yield
    finally:
        if not conn.closed:
            conn.rollback()


def _become_reader(conn: psycopg.Connection) -> None:
    try:
        conn.execute(schema.query("text2sql_become_reader"))
    except psycopg.errors.UndefinedObject as exc:
        raise ConfigurationError(f"the role {READER_ROLE} does not exist: run "
                                 f"`pgfleet db migrate`") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(f"this user cannot SET ROLE {READER_ROLE}: run "
                                 f"GRANT {READER_ROLE} TO <the user pgfleet connects as>") from exc
    row = conn.execute(schema.query("text2sql_whoami")).fetchone()
    if row is None or row[0] != READER_ROLE or row[1] != "on":
        # never run a query outside the guard, whatever the server said
        raise ConfigurationError(f"could not enter a read-only transaction as {READER_ROLE} "
                                 f"(got role {row and row[0]}, read-only {row and row[1]})")


def explain(conn: psycopg.Connection, checked_sql: str, *, timeout_ms: int) -> str | None:
    """EXPLAIN (plan, never run) ``checked_sql``; the server's message when it refuses."""
    statement = sql.SQL("EXPLAIN ") + sql.SQL(checked_sql)
    try:
        with reader_transaction(conn, timeout_ms=timeout_ms), conn.cursor() as cur:
            # binary results force the extended protocol: one statement only
            cur.execute(statement, binary=True)
            cur.fetchall()
    except psycopg.errors.QueryCanceled:
        return f"PostgreSQL could not plan it within {timeout_ms} ms."
    except psycopg.Error as exc:
        _raise_if_disconnected(conn, exc)
        return f"PostgreSQL rejected it: {_server_message(exc)}"
    return None


def execute_readonly(conn: psycopg.Connection, checked_sql: str, *, timeout_ms: int,
                     row_cap: int) -> Result:
    """Run ``checked_sql`` under the guard, fetching at most ``row_cap`` rows. The caller
    checks the SQL first; this layer holds even when it does not."""
    started = time.perf_counter()
    try:
        with reader_transaction(conn, timeout_ms=timeout_ms), \
                conn.cursor(name=CURSOR_NAME) as cur:
            # a server-side cursor: DECLARE accepts only one SELECT/VALUES, sent with the
            # extended protocol, and rows come over only as they are fetched
            cur.execute(sql.SQL(checked_sql))
            columns = [c.name for c in cur.description or []]
            rows = cur.fetchmany(row_cap + 1)
    except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
        raise QueryTimeout(f"the query ran past its {timeout_ms} ms limit and was cancelled: "
                           f"{_server_message(exc)}") from exc
    except psycopg.Error as exc:
        _raise_if_disconnected(conn, exc)
        raise SqlRejected([f"PostgreSQL rejected it: {_server_message(exc)}"]) from exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.info("read-only query ran", extra={"rows": min(len(rows), row_cap),
                                              "elapsed_ms": round(elapsed_ms, 1)})
    return Result(columns, [tuple(r) for r in rows[:row_cap]], len(rows) > row_cap, elapsed_ms)


def _raise_if_disconnected(conn: psycopg.Connection, exc: psycopg.Error) -> None:
    if conn.closed or isinstance(exc, psycopg.errors.AdminShutdown):
        raise DatabaseUnavailable(f"database connection lost: {_server_message(exc)}") from exc


def _server_message(exc: psycopg.Error) -> str:
    lines = str(exc).strip().splitlines()
    text = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
    return f"{text} ({exc.diag.message_hint})" if exc.diag.message_hint else text
