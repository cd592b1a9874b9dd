"""The SQL guard on a real PostgreSQL: hostile SQL forced past the checker still cannot write,
timeouts and the row cap hold, EXPLAIN reports the server's message, and ``pgfleet sql``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus

from tests.conftest import create_database, run_cli
from tests.unit.test_sql_guard import HOSTILE
from workers import db
from workers.errors import PgfleetError, QueryTimeout, SqlRejected
from workers.text2sql import check_sql, run_readonly
from workers.text2sql.readonly import READER_ROLE, execute_readonly, reader_transaction

MIGRATION = Path(__file__).resolve().parents[2] / "schema/migrations/0005_text2sql_reader.sql"

# Forced through the executor without the checker: each must leave everything as it was.
FORCED = [
    *HOSTILE,
    "UPDATE docs SET content = 'x'",
    "DELETE FROM docs",
    "INSERT INTO docs (content) VALUES ('planted')",
    "WITH d AS (DELETE FROM docs RETURNING id) SELECT count(*) FROM d",
    "SELECT nextval('docs_id_seq')",
    "SELECT setval('docs_id_seq', 999)",
    "SELECT set_config('transaction_read_only', 'off', false)",
    "SELECT * FROM secret_notes",
    "SELECT 1; COMMIT; DELETE FROM docs",
    "SELECT 1; SET ROLE NONE; DELETE FROM docs",
]


@pytest.fixture(scope="module")
def guard_url(services):
    url = create_database(services, "pgfleet_sqlguard")
    with db.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE secret_notes (note text)")
        conn.execute("INSERT INTO secret_notes VALUES ('not for readers')")
        conn.execute("CREATE SEQUENCE s")
        for i in range(5):
            conn.execute("INSERT INTO docs (content) VALUES (%s)", (f"doc {i}",))
    return url


@pytest.fixture
def gconn(guard_url):
    with db.connect(guard_url, autocommit=True) as conn:
        yield conn


def _state(conn) -> tuple:
    return conn.execute(
        "SELECT (SELECT count(*) FROM docs), (SELECT md5(string_agg(content, ',' ORDER BY id))"
        " FROM docs), (SELECT last_value FROM docs_id_seq), (SELECT count(*) FROM secret_notes),"
        " (SELECT count(*) FROM pg_largeobject_metadata), to_regclass('t'), to_regclass('x'),"
        " current_user, current_setting('statement_timeout'),"
        " current_setting('transaction_read_only')").fetchone()


def test_the_reader_role_can_only_read_docs(gconn):
    row = gconn.execute(
        "SELECT rolcanlogin, rolsuper, has_table_privilege(%(r)s, 'docs', 'SELECT'),"
        " has_table_privilege(%(r)s, 'docs', 'INSERT, UPDATE, DELETE, TRUNCATE'),"
        " has_table_privilege(%(r)s, 'model_versions', 'SELECT')"
        " FROM pg_roles WHERE rolname = %(r)s", {"r": READER_ROLE}).fetchone()
    assert row == (False, False, True, False, False)


def test_a_non_superuser_that_creates_the_role_can_set_it(gconn):
    # the migration's DO block, for a fresh role, run by a CREATEROLE user (not a superuser)
    block = MIGRATION.read_text("utf-8")
    block = block[block.index("DO $$"):block.index("$$;") + 3].replace(READER_ROLE, "sqlguard_r")
    with gconn.transaction(force_rollback=True):
        gconn.execute("CREATE ROLE sqlguard_app NOLOGIN CREATEROLE")
        gconn.execute("SET LOCAL ROLE sqlguard_app")
        gconn.execute(block)
        gconn.execute(block)  # twice: nothing left to do
        gconn.execute("SET LOCAL ROLE sqlguard_r")
        assert gconn.execute("SELECT current_user").fetchone()[0] == "sqlguard_r"


@pytest.mark.parametrize("sql", FORCED)
def test_hostile_sql_forced_past_the_checker_changes_nothing(gconn, sql):
    before = _state(gconn)
    try:
        execute_readonly(gconn, sql, timeout_ms=300, row_cap=10)
    except (SqlRejected, QueryTimeout):
        pass
    finally:
        # session advisory locks outlive a rollback: the checker is what refuses them
        gconn.execute("SELECT pg_advisory_unlock_all()")
    assert gconn.info.transaction_status == TransactionStatus.IDLE
    assert _state(gconn) == before


def test_the_role_and_the_read_only_transaction_hold_on_their_own(gconn):
    # each layer alone refuses a write: the transaction...
    with reader_transaction(gconn, timeout_ms=1000), \
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        gconn.execute("UPDATE docs SET content = 'x'")
    # ...the role, even in a read-write transaction...
    with gconn.transaction(force_rollback=True):
        gconn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(READER_ROLE)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            gconn.execute("UPDATE docs SET content = 'x'")
    # ...and the cursor (one SELECT, extended protocol)
    with pytest.raises(SqlRejected, match="syntax error"):
        execute_readonly(gconn, "UPDATE docs SET content = 'x'", timeout_ms=1000, row_cap=10)
    with pytest.raises(SqlRejected, match="permission denied for table secret_notes"):
        execute_readonly(gconn, "SELECT * FROM secret_notes", timeout_ms=1000, row_cap=10)
    with pytest.raises(SqlRejected, match="multiple commands"):
        execute_readonly(gconn, "SELECT 1; COMMIT; DELETE FROM docs", timeout_ms=1000,
                         row_cap=10)
    assert gconn.execute("SELECT count(*) FROM docs").fetchone()[0] == 5


def test_a_slow_query_is_cancelled_at_its_timeout(gconn):
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="200 ms"):
        execute_readonly(gconn, "SELECT pg_sleep(5)", timeout_ms=200, row_cap=10)
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        run_readonly(gconn, "SELECT count(*) FROM generate_series(1, 100000000) a",
                     timeout_ms=200)
    assert time.monotonic() - started < 2.0
    assert gconn.execute("SELECT current_setting('statement_timeout')").fetchone()[0] == "0"


def test_rows_are_capped(gconn):
    result = run_readonly(gconn, "SELECT id, content FROM docs ORDER BY id", row_cap=3)
    assert result.columns == ["id", "content"]
    assert [r[1] for r in result.rows] == ["doc 0", "doc 1", "doc 2"]
    assert result.truncated and result.elapsed_ms > 0
    result = run_readonly(gconn, "SELECT id FROM docs", row_cap=5)
    assert len(result.rows) == 5 and not result.truncated


def test_a_connection_in_a_transaction_is_refused(guard_url):
    with db.connect(guard_url) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(PgfleetError, match="no transaction open"):
            run_readonly(conn, "SELECT 1")
        conn.rollback()
        assert run_readonly(conn, "SELECT 1").rows == [(1,)]  # not autocommit, but idle
        assert conn.info.transaction_status == TransactionStatus.IDLE


def test_explain_reports_the_servers_message(gconn):
    verdict = check_sql("SELECT titel FROM docs", gconn)
    assert not verdict.ok
    assert re.search(r'PostgreSQL rejected it: column "titel" does not exist',
                     verdict.reasons[0]), verdict.reasons
    verdict = check_sql("SELECT * FROM secret_notes", gconn)
    assert "permission denied for table secret_notes" in verdict.reasons[0]
    verdict = check_sql("SELECT id FROM docs WHERE content LIKE '%doc%'", gconn)
    assert verdict.ok and verdict.reasons == []
    assert gconn.info.transaction_status == TransactionStatus.IDLE


def test_explain_never_runs_the_query(gconn):
    # planned only: a query that would fail when run passes EXPLAIN
    assert check_sql("SELECT 1 / (count(*) - count(*)) FROM docs", gconn).ok
    with pytest.raises(SqlRejected, match="division by zero"):
        run_readonly(gconn, "SELECT 1 / (count(*) - count(*)) FROM docs")


def test_cli_check_and_run(services, guard_url):
    env = services.env(PGFLEET_DATABASE_URL=guard_url)
    good = run_cli("sql", "--check", "SELECT id FROM docs", env=env)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "ok"
    bad = run_cli("sql", "--check", "SELECT 1; DELETE FROM docs", env=env)
    assert bad.returncode == 1
    assert "Only one statement may run" in bad.stdout
    unknown = run_cli("sql", "--check", "SELECT nope FROM docs", "--json", env=env)
    assert unknown.returncode == 1
    verdict = json.loads(unknown.stdout)
    assert verdict["ok"] is False and 'column "nope" does not exist' in verdict["reasons"][0]
    ran = run_cli("sql", "--run", "SELECT id, content FROM docs ORDER BY id", "--max-rows", "2",
                  "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["rows"] == [[1, "doc 0"], [2, "doc 1"]] and result["truncated"] is True
    table = run_cli("sql", "--run", "SELECT content FROM docs ORDER BY id LIMIT 1", env=env)
    assert table.returncode == 0 and "doc 0" in table.stdout
    neither = run_cli("sql", env=env)
    assert neither.returncode == 2 and "exactly one of" in neither.stderr


def test_the_executor_surfaces_a_lost_connection(guard_url):
    conn = db.connect(guard_url, autocommit=True)
    conn.close()
    with pytest.raises((PgfleetError, psycopg.Error)):
        run_readonly(conn, "SELECT 1")
