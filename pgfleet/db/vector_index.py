"""The HNSW index of one embedding version (of docs, and of each source), and who holds a
table up.

The index is built with ``CREATE INDEX CONCURRENTLY``, outside any transaction: writers of
``embeddings`` (the workers) never wait for it. The build itself waits for transactions
that write ``embeddings`` to end; that wait is bounded by ``lock_timeout``, and when it
runs out the answer says who held it up (the index is then built by the next call). A build
that failed leaves an invalid index behind: the next call drops it (concurrently) and
builds it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

import schema
from pgfleet.errors import PgfleetError, UnknownModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOutcome:
    name: str
    #: the index exists and is valid
    valid: bool
    #: why it is not (None when valid)
    problem: str | None = None


def index_name(version_id: int) -> str:
    return f"embeddings_hnsw_v{int(version_id)}"


def source_index_name(source_id: int, version_id: int) -> str:
    """The HNSW index of one source's chunks for one version (a partial index of
    ``source_chunks``: a search of that source and version reads that index alone)."""
    return f"source_chunks_hnsw_s{int(source_id)}_v{int(version_id)}"


def ensure_version_index(conn: psycopg.Connection, version_id: int, *,
                         lock_timeout_s: float) -> IndexOutcome:
    """Make sure the version's index of docs' vectors exists and is valid, building it
    concurrently. The connection must not be in a transaction; it is used in autocommit mode
    meanwhile."""
    return _ensure(conn, index_name(version_id), "embeddings", "version_index_create",
                   version_id, {}, lock_timeout_s,
                   "searches of this version scan without it until the next pgfleet ab set "
                   "builds it")


def ensure_source_index(conn: psycopg.Connection, source_id: int, version_id: int, *,
                        lock_timeout_s: float) -> IndexOutcome:
    """The same for one source's chunks and one version."""
    return _ensure(conn, source_index_name(source_id, version_id), "source_chunks",
                   "source_index_create", version_id,
                   {"source_id": sql.Literal(int(source_id))}, lock_timeout_s,
                   "searches of this source and version scan without it until the next "
                   "pgfleet ab set of its model builds it")


def _ensure(conn: psycopg.Connection, name: str, table: str, create: str, version_id: int,
            literals: dict[str, sql.Composable], lock_timeout_s: float,
            meanwhile: str) -> IndexOutcome:
    with autocommit(conn):
        row = conn.execute(schema.query("embedding_version_dimensions"),
                           {"version_id": version_id}).fetchone()
        if row is None or row[0] is None:
            raise UnknownModelVersion(f"model version {version_id} is not an embedding version "
                                      "with dimensions")
        dims = int(row[0])
        state = _state(conn, name)
        if state is not None and state["valid"]:
            return IndexOutcome(name, True)
        if state is not None and state["building_pid"] is not None:
            return IndexOutcome(name, False, f"index {name} is being built by pid "
                                             f"{state['building_pid']}")
        with lock_timeout(conn, lock_timeout_s):
            try:
                if state is not None:
                    # left invalid by a build that failed (or was cancelled): build it anew
                    logger.warning("index %s is invalid (a build failed); rebuilding it", name)
                    conn.execute(sql.SQL(schema.query("index_drop_concurrently")).format(
                        index=sql.Identifier(name)))
                conn.execute(sql.SQL(schema.query(create)).format(
                    index=sql.Identifier(name), dims=sql.Literal(dims),
                    version_id=sql.Literal(int(version_id)), **literals))
            except psycopg.errors.LockNotAvailable:
                holders = describe(writers(conn, table))
                problem = (f"index {name} was not built: it waited more than "
                           f"{lock_timeout_s:g} s for transactions writing {table}"
                           + (f" ({holders})" if holders else "") + f"; {meanwhile}")
                return IndexOutcome(name, False, problem)
        state = _state(conn, name)
        if state is None or not state["valid"]:
            return IndexOutcome(name, False, f"index {name} is not valid after its build")
        logger.info("built index %s for version %s (%s dimensions)", name, version_id, dims)
        return IndexOutcome(name, True)


def _state(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(schema.query("index_state"), {"name": name}).fetchone()


@contextlib.contextmanager
def autocommit(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The connection in autocommit mode (what CREATE INDEX CONCURRENTLY needs), restored
    after. Refused inside a transaction, which it would have to end."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise PgfleetError("this needs a connection that is not inside a transaction")
    previous = conn.autocommit
    conn.autocommit = True
    try:
        yield conn
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = previous


@contextlib.contextmanager
def lock_timeout(conn: psycopg.Connection, seconds: float, *,
                 local: bool = False) -> Iterator[None]:
    """``lock_timeout`` for the block (``local``: until the transaction ends)."""
    value = f"{max(1, round(seconds * 1000))}ms"
    if local:
        conn.execute(schema.query("set_lock_timeout"), {"value": value, "is_local": True})
        yield
        return
    row = conn.execute(schema.query("get_lock_timeout")).fetchone()
    assert row is not None  # current_setting(...): always one row
    previous = row[0]
    conn.execute(schema.query("set_lock_timeout"), {"value": value, "is_local": False})
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            conn.execute(schema.query("set_lock_timeout"),
                         {"value": previous, "is_local": False})


#: the locks a writer holds on a table (ROW EXCLUSIVE or stronger): what SHARE and
#: CREATE INDEX CONCURRENTLY wait for
WRITER_MODES = ("RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock",
                "ExclusiveLock", "AccessExclusiveLock")
#: and SELECT ... FOR UPDATE/SHARE's: every session that may hold a row lock on it
ROW_LOCKER_MODES = ("RowShareLock", *WRITER_MODES)


def writers(conn: psycopg.Connection, relation: str) -> list[dict[str, Any]]:
    """The other transactions that hold a writer's lock on ``relation`` now."""
    return lockers(conn, relation, WRITER_MODES)


def lockers(conn: psycopg.Connection, relation: str,
            modes: tuple[str, ...] = ROW_LOCKER_MODES) -> list[dict[str, Any]]:
    """The other transactions holding one of these locks on ``relation`` now."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(schema.query("relation_lockers"),
                           {"relation": relation, "modes": list(modes)}).fetchall()


def still_open(conn: psycopg.Connection, vxids: list[str]) -> set[str]:
    if not vxids:
        return set()
    return {r[0] for r in conn.execute(schema.query("transactions_still_open"),
                                       {"vxids": vxids})}


def describe(holders: list[dict[str, Any]], limit: int = 5) -> str:
    """One phrase per transaction: pid, state, since when, what it ran last."""
    parts = []
    for h in holders[:limit]:
        if h["pid"] is None:
            parts.append(f"a prepared transaction ({h['virtualtransaction']})")
            continue
        since = (f" since {h['xact_start']:%Y-%m-%d %H:%M:%S%z} ({h['xact_age_s']:.0f} s)"
                 if h["xact_start"] is not None else "")
        app = f", application {h['application_name']!r}" if h["application_name"] else ""
        query = " ".join((h["query"] or "").split())
        parts.append(f"pid {h['pid']} ({h['state'] or 'unknown state'}{since}{app}"
                     + (f", last query: {query[:120]}" if query else "") + ")")
    if len(holders) > limit:
        parts.append(f"and {len(holders) - limit} more")
    return "; ".join(parts)
