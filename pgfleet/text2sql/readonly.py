"""Running checked SQL in a session that can do no more than read what the reader may read.

Guarded SQL runs only on a :class:`Reader`: a connection opened from the reader URL
(``PGFLEET_READER_URL``) whose *session user* is the login ``pgfleet_reader``, or a login
that is a member of it and nothing else. :func:`connect_reader` checks that when it connects
(not a superuser, none of CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS, no other role) and
refuses otherwise. A role switched to with ``SET ROLE`` from a privileged session is not
enough: the query itself can switch back (``set_config('role', 'none', true)`` inside a
function that runs SQL text), and then it is whoever the session user is.

On that session every statement runs inside one transaction that is always rolled back, and
that is:

* read-only (``BEGIN READ ONLY``, verified before the query runs);
* limited by ``statement_timeout`` and ``lock_timeout``, and by ``work_mem`` per sort or hash
  (``set_config(..., is_local => true)``); ``temp_file_limit`` is a setting of the role
  (migration 0008), which the reader cannot change; a client-side watchdog cancels the
  statement a little after the time limit even if the query lifted its own timeout;
* sent with the extended query protocol, which PostgreSQL refuses for more than one statement
  (``COMMIT; DELETE ...`` cannot end the transaction and write outside it);
* bounded in bytes: the server adds up each row's size (``pgfleet_result_bytes_v1``, see
  ``schema/idempotent/040_text2sql_result_bytes.sql``) and stops the query past the bound,
  before the row is sent, and the client counts what it receives against the same bound.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

import schema
from pgfleet import db
from pgfleet.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    QueryTimeout,
    ResultTooLarge,
    SqlRejected,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BYTES", "Reader", "Result", "ResultTooLarge", "check_same_database",
           "connect_reader", "execute_readonly", "explain", "install_result_bound",
           "reader_transaction", "with_database"]

READER_ROLE = "pgfleet_reader"
READER_URL_SETTING = "PGFLEET_READER_URL"
APPLICATION_NAME = "pgfleet-reader"
CURSOR_NAME = "pgfleet_text2sql"
#: the most a guarded query's result may hold (its rows as text), unless the caller says
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: memory per sort or hash in a guarded transaction (also the role's default, migration 0008)
WORK_MEM = "8MB"
#: temporary files a reader session may hold (the role's setting, migration 0008)
TEMP_FILE_LIMIT = "256MB"
#: rows fetched at a time, each batch counted against the bound in bytes
FETCH_ROWS = 100
#: how long after its time limit the client cancels a statement itself
CANCEL_GRACE_S = 2.0
#: the SQLSTATE pgfleet_result_bytes_v1 raises past the bound
RESULT_BYTES_SQLSTATE = "PF001"
RESULT_BOUND_FILE = "040_text2sql_result_bytes.sql"

HOW_TO_LOGIN = (f"give the role a login, as a superuser or its admin: ALTER ROLE {READER_ROLE} "
                f"LOGIN PASSWORD '...'; then set {READER_URL_SETTING}=postgresql://"
                f"{READER_ROLE}:PASSWORD@HOST:PORT/DATABASE (`pgfleet up` does both for the "
                f"servers it starts)")


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float
    bytes: int = 0  # the rows' size as received (text)


class Reader:
    """A session whose session user is the reader login (see :func:`connect_reader`): the
    only connection guarded SQL runs on. Use it as a context manager, or :meth:`close` it."""

    def __init__(self, conn: psycopg.Connection, url: str, user: str, database: str):
        self.conn = conn
        self.url = url
        self.user = user
        self.database = database
        self._bound: sql.Composable | None = None

    def for_database(self, dbname: str) -> Reader:
        """The same login on another database of the same server (a new session)."""
        return connect_reader(self.url, dbname=dbname)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Reader {self.user} on {self.database}>"


def connect_reader(url: str | None, *, dbname: str | None = None,
                   connect_timeout_s: int = 5) -> Reader:
    """A reader session from ``url`` (the reader URL; ``dbname`` replaces its database).
    Refused with :class:`~pgfleet.errors.ConfigurationError` when there is no URL, or when
    its session user has more than the reader's rights."""
    if not url:
        raise ConfigurationError(f"guarded SQL needs the login of the role {READER_ROLE}, and "
                                 f"{READER_URL_SETTING} is not set: {HOW_TO_LOGIN}")
    if dbname is not None:
        url = with_database(url, dbname)
    conn = db.connect(url, autocommit=True, register=False, connect_timeout_s=connect_timeout_s,
                      name=APPLICATION_NAME)
    try:
        user, database = _verify_session(conn)
    except BaseException:
        conn.close()
        raise
    return Reader(conn, url, user, database)


def with_database(url: str, dbname: str) -> str:
    """``url`` (a postgresql:// URL) naming database ``dbname`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def _verify_session(conn: psycopg.Connection) -> tuple[str, str]:
    row = conn.execute(schema.query("text2sql_reader_session"), {"reader": READER_ROLE}).fetchone()
    if row is None:  # the session user has no row in pg_roles (dropped while connected)
        raise ConfigurationError(f"could not read the role of the reader session on "
                                 f"{conn.info.dbname}")
    (user, database, superuser, createrole, createdb, replication, bypassrls, reader_exists,
     uses_reader, others, temp_file_limit) = row
    if not reader_exists:
        raise ConfigurationError(f"the role {READER_ROLE} does not exist on this server: run "
                                 f"`pgfleet db migrate`")
    problems = []
    if superuser:
        problems.append("is a superuser")
    else:
        problems += [f"has {name}" for name, flag in (
            ("CREATEROLE", createrole), ("CREATEDB", createdb), ("REPLICATION", replication),
            ("BYPASSRLS", bypassrls)) if flag]
        if not uses_reader:
            problems.append(f"is neither {READER_ROLE} nor a member of it that inherits its "
                            f"rights")
        if others:
            problems.append(f"is also a member of {', '.join(others)}")
    if problems:
        raise ConfigurationError(
            f"guarded SQL runs only as a login with the rights of {READER_ROLE} and no more, "
            f"but {user} {'; '.join(problems)}: set {READER_URL_SETTING} to the login of "
            f"{READER_ROLE} ({HOW_TO_LOGIN})")
    if temp_file_limit == "-1":
        logger.warning("the reader login has no temp_file_limit: a guarded query may fill the "
                       "disk with temporary files (as a superuser: ALTER ROLE %s SET "
                       "temp_file_limit = '%s')", user, TEMP_FILE_LIMIT)
    return user, database


def check_same_database(reader: Reader, conn: psycopg.Connection) -> None:
    """Refuse a reader session on another database than the fleet connection ``conn``: the
    schema read through one would be queried through the other."""
    if reader.database != conn.info.dbname:
        raise ConfigurationError(f"{READER_URL_SETTING} is a login on the database "
                                 f"{reader.database}, but the fleet's database is "
                                 f"{conn.info.dbname}: point it at the same database")


def _session_of(reader: Reader) -> psycopg.Connection:
    if not isinstance(reader, Reader):
        raise ConfigurationError(
            f"guarded SQL runs only in a session of the reader login, not on {reader!r}: open "
            f"one with pgfleet.text2sql.readonly.connect_reader({READER_URL_SETTING})")
    if reader.conn.closed:
        raise DatabaseUnavailable(f"the reader session on {reader.database} is closed")
    return reader.conn


@contextlib.contextmanager
def reader_transaction(reader: Reader, *, timeout_ms: int) -> Iterator[psycopg.Connection]:
    """A read-only transaction with its limits on the reader's session, always rolled back;
    yields the session's connection."""
    conn = _session_of(reader)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ConfigurationError("read-only queries need a reader session with no transaction "
                                 "open")
    try:
        if conn.autocommit:
            conn.execute(schema.query("text2sql_begin_read_only"))
        # without autocommit psycopg has just sent BEGIN; this makes it read-only either way
        conn.execute(schema.query("text2sql_read_only"))
        conn.execute(schema.query("text2sql_limits"),
                     {"statement_timeout": f"{int(timeout_ms)}ms",
                      "lock_timeout": f"{int(timeout_ms)}ms", "work_mem": WORK_MEM})
        row = conn.execute(schema.query("text2sql_whoami")).fetchone()
        if row is None or tuple(row) != (reader.user, reader.user, "on"):
            # never run a query outside the guard, whatever the server said
            raise ConfigurationError(f"could not enter a read-only transaction as {reader.user} "
                                     f"(got {row and tuple(row)})")
        yield conn
    finally:
        if not conn.closed:
            conn.rollback()


def explain(reader: Reader, checked_sql: str, *, timeout_ms: int) -> str | None:
    """EXPLAIN (plan, never run) ``checked_sql``; the server's message when it refuses."""
    statement = sql.SQL(schema.query("text2sql_explain")).format(query=sql.SQL(checked_sql))
    conn = _session_of(reader)
    try:
        with reader_transaction(reader, timeout_ms=timeout_ms), conn.cursor() as cur:
            # binary results force the extended protocol: one statement only
            cur.execute(statement, binary=True)
            cur.fetchall()
    except psycopg.errors.QueryCanceled:
        return f"PostgreSQL could not plan it within {timeout_ms} ms."
    except psycopg.Error as exc:
        _raise_if_disconnected(conn, exc)
        return f"PostgreSQL rejected it: {_server_message(exc)}"
    return None


def execute_readonly(reader: Reader, checked_sql: str, *, timeout_ms: int, row_cap: int,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> Result:
    """Run ``checked_sql`` under the guard, fetching at most ``row_cap`` rows and refusing a
    result of more than ``max_bytes`` (:class:`~pgfleet.errors.ResultTooLarge`). The caller
    checks the SQL first; this layer holds even when it does not."""
    conn = _session_of(reader)
    statement = _bounded(reader, checked_sql, max_bytes)
    started = time.perf_counter()
    try:
        with reader_transaction(reader, timeout_ms=timeout_ms), \
                _Watchdog(conn, timeout_ms / 1000 + CANCEL_GRACE_S), \
                conn.cursor(name=CURSOR_NAME) as cur:
            # a server-side cursor: DECLARE accepts only one SELECT/VALUES, sent with the
            # extended protocol, and rows come over only as they are fetched
            cur.execute(statement)
            columns = [c.name for c in cur.description or []]
            rows, size = _fetch(cur, row_cap + 1, max_bytes)
    except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
        raise QueryTimeout(f"the query ran past its {timeout_ms} ms limit and was cancelled: "
                           f"{_server_message(exc)}") from exc
    except psycopg.Error as exc:
        _raise_if_disconnected(conn, exc)
        if exc.diag.sqlstate == RESULT_BYTES_SQLSTATE:
            raise ResultTooLarge(max_bytes) from exc
        raise SqlRejected([f"PostgreSQL rejected it: {_server_message(exc)}"]) from exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.info("read-only query ran", extra={"rows": min(len(rows), row_cap), "bytes": size,
                                              "elapsed_ms": round(elapsed_ms, 1)})
    return Result(columns, [tuple(r) for r in rows[:row_cap]], len(rows) > row_cap, elapsed_ms,
                  size)


def _bounded(reader: Reader, checked_sql: str, max_bytes: int) -> sql.Composed:
    """``checked_sql`` as the subquery of one that counts every row's bytes on the server."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
    if reader._bound is None:  # noqa: SLF001 - resolved once per session
        row = reader.conn.execute(schema.query("text2sql_result_bound")).fetchone()
        if row is None:
            raise ConfigurationError(f"the function pgfleet_result_bytes_v1 is missing from the "
                                     f"database {reader.database}: run `pgfleet db migrate`")
        reader._bound = sql.Identifier(row[0], "pgfleet_result_bytes_v1")  # noqa: SLF001
    text = checked_sql.strip().rstrip(";").rstrip()
    return sql.SQL(schema.query("text2sql_bounded_result")).format(
        query=sql.SQL(text), bound=reader._bound, max_bytes=sql.Literal(max_bytes))  # noqa: SLF001


def _fetch(cur: psycopg.ServerCursor, limit: int, max_bytes: int) -> tuple[list, int]:
    """Up to ``limit`` rows, a batch at a time, each counted in bytes as received."""
    rows: list = []
    size = 0
    while len(rows) < limit:
        wanted = min(FETCH_ROWS, limit - len(rows))
        batch = cur.fetchmany(wanted)
        size += _received_bytes(cur.pgresult)
        if size > max_bytes:
            raise ResultTooLarge(max_bytes)
        rows.extend(batch)
        if len(batch) < wanted:
            break
    return rows, size


def _received_bytes(result: psycopg.pq.abc.PGresult | None) -> int:
    if result is None:
        return 0
    return sum(len(value) for r in range(result.ntuples) for c in range(result.nfields)
               if (value := result.get_value(r, c)) is not None)


class _Watchdog:
    """Cancels the statement running on ``conn`` once ``after_s`` have passed: the time
    bound holds even for SQL that lifted its own ``statement_timeout``."""

    def __init__(self, conn: psycopg.Connection, after_s: float):
        self._conn, self._after_s = conn, after_s
        self._lock = threading.Lock()
        self._armed = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Watchdog:
        self._armed = True
        self._timer = threading.Timer(self._after_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            logger.warning("cancelling a guarded query %.1f s after it started", self._after_s)
            try:
                self._conn.cancel_safe(timeout=5.0)
            except psycopg.Error as exc:
                logger.warning("could not cancel the guarded query: %s", exc)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()


def install_result_bound(conn: psycopg.Connection) -> None:
    """Create (or replace) ``pgfleet_result_bytes_v1`` in the database of ``conn``, an
    owner's connection: for databases that pgfleet does not migrate (the defog benchmark's)."""
    if conn.execute(schema.query("text2sql_result_bound")).fetchone() is None:
        conn.execute(next(f.text for f in schema.idempotent() if f.name == RESULT_BOUND_FILE))


def _raise_if_disconnected(conn: psycopg.Connection, exc: psycopg.Error) -> None:
    if conn.closed or isinstance(exc, psycopg.errors.AdminShutdown):
        raise DatabaseUnavailable(f"database connection lost: {_server_message(exc)}") from exc


def _server_message(exc: psycopg.Error) -> str:
    lines = str(exc).strip().splitlines()
    text = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
    return f"{text} ({exc.diag.message_hint})" if exc.diag.message_hint else text
