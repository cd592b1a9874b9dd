"""The database boundary: psycopg connections, pools, error mapping, running the named
queries, and the HNSW index of a version (:mod:`~pgfleet.db.vector_index`).

The only place where SQL text may be written in Python (``tests/unit/test_layers.py``);
other code runs the named queries of ``schema/queries/*.sql`` through :func:`fetch_all` /
:func:`fetch_one`. Driver errors become pgfleet's own exceptions (``raise ... from exc``): a
server that cannot be reached is a :class:`~pgfleet.errors.DatabaseUnavailable` (retryable);
the message names the server without its password. It may import only the shared modules
(settings, state, records, corpus, errors) and :mod:`schema`: never models, embedding,
text2sql, training or anything above the library.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

import schema
from pgfleet.errors import DatabaseConflict, DatabaseRejected, DatabaseUnavailable
from pgfleet.settings import redact

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgfleet"


def _configure(conn: psycopg.Connection) -> None:
    # pgvector's adapters: numpy arrays in, numpy arrays out (binary)
    from pgvector.psycopg import register_vector

    register_vector(conn)


def connect(url: str, *, autocommit: bool = False, register: bool = True,
            connect_timeout_s: int = 5, name: str = APPLICATION_NAME) -> psycopg.Connection:
    """A single connection, for listeners, migrations and one-shot commands."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout_s,
                               application_name=name)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(_describe(url, exc)) from exc
    if register:
        try:
            _configure(conn)
        except psycopg.ProgrammingError:
            # the vector extension is not installed yet (before the first migrate)
            conn.rollback()
    return conn


#: a connection given back to a pool less than this long ago is handed out again without
#: a round trip to check it (see :func:`open_pool`)
CHECK_AFTER_IDLE_S = 2.0


def open_pool(url: str, *, min_size: int = 1, max_size: int = 4, name: str = APPLICATION_NAME,
              timeout_s: float = 10.0, autocommit: bool = False,
              check_after_idle_s: float = 0.0) -> ConnectionPool:
    """A pool for workers and producers; opened after fork, in the process that uses it.

    A connection is checked (a round trip) before it is handed out, so that one the server
    closed meanwhile is replaced instead of failing its caller. With ``check_after_idle_s``,
    only one idle for longer is checked: the API's requests take a connection two or three
    times each, and the checks were a tenth of a search's time."""
    check = ConnectionPool.check_connection
    if check_after_idle_s > 0:
        check = _check_if_idle(check_after_idle_s)
    pool = ConnectionPool(
        url, min_size=min_size, max_size=max_size, configure=_configure, open=False,
        kwargs={"application_name": name, "connect_timeout": 5, "autocommit": autocommit},
        timeout=timeout_s, reset=_returned if check_after_idle_s > 0 else None,
        reconnect_timeout=60.0, check=check, name=name)
    pool.open(wait=False)
    return pool


_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _returned(conn: psycopg.Connection) -> None:
    _returned_at[conn] = time.monotonic()


def _check_if_idle(idle_s: float):
    def check(conn: psycopg.Connection) -> None:
        returned = _returned_at.get(conn)
        if returned is None or time.monotonic() - returned >= idle_s:
            ConnectionPool.check_connection(conn)
    return check


@contextlib.contextmanager
def pooled(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection from the pool, with driver errors mapped to pgfleet's."""
    with mapped_errors(), pool.connection() as conn:
        yield conn


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Driver errors raised inside become pgfleet's (for single connections; ``pooled``
    does this for pools)."""
    try:
        yield
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
            psycopg.errors.ForeignKeyViolation) as exc:
        # a foreign-key violation here is a doc deleted while its batch was written: running
        # the statement again skips it
        raise DatabaseConflict(f"database conflict, safe to retry: {_first_line(exc)}") from exc
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"no database connection available: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database connection failed: {_first_line(exc)}") from exc
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.RaiseException,
            psycopg.errors.InsufficientPrivilege) as exc:
        raise DatabaseRejected(f"{type(exc).__name__}: {_first_line(exc)}") from exc


def fetch_all(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None,
              ) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(schema.query(name), params or {})
        return cur.fetchall()


def fetch_one(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None,
              ) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(schema.query(name), params or {})
        return cur.fetchone()


def execute(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> int:
    """Run a named statement that returns no rows; the number of rows it changed."""
    with conn.cursor() as cur:
        cur.execute(schema.query(name), params or {})
        return cur.rowcount


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(url: str, exc: BaseException) -> str:
    return f"cannot connect to PostgreSQL at {redact(url)}: {_first_line(exc)}"
