"""The SQL guard on a real PostgreSQL: guarded SQL runs in a session of the reader login and
nowhere else, hostile SQL forced past the checker still cannot write or see more than the
reader may, results are bounded in bytes, timeouts and the row cap hold, EXPLAIN reports the
server's message, and ``pgfleet sql``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus

from pgfleet import db
from pgfleet.errors import ConfigurationError, PgfleetError, QueryTimeout, SqlRejected
from pgfleet.text2sql import check_sql, readonly, run_readonly
from tests.conftest import ROOT, create_database, run_cli
from tests.unit.test_sql_guard import AUDIT, HOSTILE

READER_ROLE = "pgfleet_reader"
MIGRATIONS = Path(__file__).resolve().parents[2] / "schema/migrations"
#: the audit's second query: 50 rows of 100 MB each
HUGE = "SELECT repeat('x', 100000000) FROM generate_series(1, 50)"

# Forced through the executor without the checker: each must leave everything as it was.
FORCED = [
    *HOSTILE,
    AUDIT,
    "UPDATE docs SET content = 'x'",
    "DELETE FROM docs",
    "INSERT INTO docs (content) VALUES ('planted')",
    "WITH d AS (DELETE FROM docs RETURNING id) SELECT count(*) FROM d",
    "SELECT nextval('docs_id_seq')",
    "SELECT setval('docs_id_seq', 999)",
    "SELECT set_config('transaction_read_only', 'off', false)",
    "SELECT set_config('role', 'none', false), set_config('statement_timeout', '0', false)",
    "SELECT * FROM secret_notes",
    "SELECT 1; COMMIT; DELETE FROM docs",
    "SELECT 1; SET ROLE NONE; DELETE FROM docs",
    "SELECT 1) AS pgfleet_q; DELETE FROM docs; SELECT (1",
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


@pytest.fixture(scope="module")
def reader_url(services, guard_url):
    return services.reader_url_for(guard_url)


@pytest.fixture
def gconn(guard_url):
    """The fleet's own connection (a superuser here): never the one guarded SQL runs on."""
    with db.connect(guard_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def reader(reader_url):
    with readonly.connect_reader(reader_url) as session:
        yield session


def _state(conn) -> tuple:
    return conn.execute(
        "SELECT (SELECT count(*) FROM docs), (SELECT md5(string_agg(content, ',' ORDER BY id))"
        " FROM docs), (SELECT last_value FROM docs_id_seq), (SELECT count(*) FROM secret_notes),"
        " (SELECT count(*) FROM pg_largeobject_metadata), to_regclass('t'), to_regclass('x'),"
        " current_user, current_setting('statement_timeout'),"
        " current_setting('transaction_read_only')").fetchone()


def _session(reader) -> tuple:
    return reader.conn.execute(
        "SELECT session_user, current_user, current_setting('statement_timeout'), "
        "current_setting('transaction_read_only'), current_setting('work_mem')").fetchone()


# ------------------------------------------------------------------------- the session
def test_the_reader_role_can_only_read_docs(gconn):
    row = gconn.execute(
        "SELECT rolcanlogin, rolsuper, has_table_privilege(%(r)s, 'docs', 'SELECT'),"
        " has_table_privilege(%(r)s, 'docs', 'INSERT, UPDATE, DELETE, TRUNCATE'),"
        " has_table_privilege(%(r)s, 'model_versions', 'SELECT')"
        " FROM pg_roles WHERE rolname = %(r)s", {"r": READER_ROLE}).fetchone()
    assert row == (True, False, True, False, False)


def test_the_reader_role_can_read_none_of_the_fleets_own_tables(gconn):
    """Not the API's key hashes, the logs or the training data: generated SQL reads the
    user's tables only, whatever it names."""
    from pgfleet.text2sql.schema_text import PGFLEET_TABLES

    readable = [t for t in PGFLEET_TABLES if gconn.execute(
        "SELECT has_table_privilege(%s, %s, 'SELECT')", (READER_ROLE, t)).fetchone()[0]]
    assert readable == []


def test_a_non_superuser_that_creates_the_role_can_set_it(gconn):
    # the migration's DO block, for a fresh role, run by a CREATEROLE user (not a superuser)
    block = (MIGRATIONS / "0005_text2sql_reader.sql").read_text("utf-8")
    block = block[block.index("DO $$"):block.index("$$;") + 3].replace(READER_ROLE, "sqlguard_r")
    with gconn.transaction(force_rollback=True):
        gconn.execute("CREATE ROLE sqlguard_app NOLOGIN CREATEROLE")
        gconn.execute("SET LOCAL ROLE sqlguard_app")
        gconn.execute(block)
        gconn.execute(block)  # twice: nothing left to do
        gconn.execute("SET LOCAL ROLE sqlguard_r")
        assert gconn.execute("SELECT current_user").fetchone()[0] == "sqlguard_r"


def test_guarded_sql_runs_as_the_reader_login_itself(reader):
    assert _session(reader)[:2] == (READER_ROLE, READER_ROLE)
    assert reader.user == READER_ROLE and reader.database == "pgfleet_sqlguard"
    with readonly.reader_transaction(reader, timeout_ms=1000) as conn:
        row = conn.execute("SELECT session_user, current_user, "
                           "current_setting('transaction_read_only')").fetchone()
    assert row == (READER_ROLE, READER_ROLE, "on")


@pytest.fixture
def logins(gconn):
    """Login roles of every kind, dropped afterwards (roles are cluster-wide)."""
    made = []

    def make(name: str, options: str) -> str:
        gconn.execute(f"DROP ROLE IF EXISTS {name}")
        gconn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{LOGIN_PASSWORD}' {options}")
        made.append(name)
        return name

    yield make
    for name in made:
        gconn.execute(f"DROP ROLE IF EXISTS {name}")


#: the password of the test logins (the embedded server takes password logins only)
LOGIN_PASSWORD = "l0gin-s3cret"


def _as(url: str, user: str) -> str:
    return re.sub(r"//.*@", f"//{user}:{LOGIN_PASSWORD}@", url, count=1)


def test_a_member_of_the_reader_with_nothing_else_may_be_the_session(reader_url, logins):
    member = logins("sqlguard_member", f"IN ROLE {READER_ROLE}")
    with readonly.connect_reader(_as(reader_url, member)) as session:
        assert session.user == member
        assert run_readonly(session, "SELECT count(*) FROM docs").rows == [(5,)]
        with pytest.raises(SqlRejected, match="permission denied for table secret_notes"):
            run_readonly(session, "SELECT * FROM secret_notes")


@pytest.mark.parametrize(("options", "message"), [
    (f"CREATEDB IN ROLE {READER_ROLE}", "CREATEDB"),
    (f"CREATEROLE IN ROLE {READER_ROLE}", "CREATEROLE"),
    (f"BYPASSRLS IN ROLE {READER_ROLE}", "BYPASSRLS"),
    (f"IN ROLE {READER_ROLE}, pg_read_all_data", "also a member of pg_read_all_data"),
    ("", f"neither {READER_ROLE} nor a member"),
])
def test_a_wider_login_is_refused(reader_url, logins, options, message):
    login = logins("sqlguard_wide", options)
    with pytest.raises(ConfigurationError, match=message):
        readonly.connect_reader(_as(reader_url, login))


def test_the_fleets_own_login_is_refused(guard_url):
    with pytest.raises(ConfigurationError, match="superuser") as caught:
        readonly.connect_reader(guard_url)
    assert "PGFLEET_READER_URL" in str(caught.value)


@pytest.mark.parametrize("url", [None, ""])
def test_without_a_reader_login_the_error_says_how_to_make_one(url):
    with pytest.raises(ConfigurationError) as caught:
        readonly.connect_reader(url)
    message = str(caught.value)
    assert "PGFLEET_READER_URL" in message
    assert f"ALTER ROLE {READER_ROLE} LOGIN PASSWORD" in message


def test_guarded_sql_never_runs_on_the_fleets_connection(gconn):
    with pytest.raises(ConfigurationError, match="connect_reader"):
        run_readonly(gconn, "SELECT 1")
    with pytest.raises(ConfigurationError, match="connect_reader"):
        check_sql("SELECT 1", gconn)
    with pytest.raises(ConfigurationError, match="connect_reader"):
        readonly.execute_readonly(gconn, "SELECT 1", timeout_ms=1000, row_cap=1)


def test_the_audit_query_forced_past_the_checker_cannot_see_pg_authid(reader):
    # set_config('role', 'none') inside ts_stat resets to the session user: the reader
    with pytest.raises(SqlRejected, match="permission denied for table pg_authid"):
        readonly.execute_readonly(reader, AUDIT, timeout_ms=5000, row_cap=100)
    assert _session(reader)[:2] == (READER_ROLE, READER_ROLE)


def test_the_audit_query_through_the_command_is_refused(services, guard_url, reader_url):
    env = services.env(PGFLEET_DATABASE_URL=guard_url, PGFLEET_READER_URL=reader_url)
    ran = run_cli("sql", "--run", AUDIT, "--json", env=env)
    assert ran.returncode == 1, ran.stdout
    result = json.loads(ran.stdout)
    assert result["ok"] is False and "rows" not in result
    assert any("ts_stat() is not allowed" in r for r in result["reasons"]), result
    assert "pg_write_server_files" not in ran.stdout


@pytest.mark.parametrize("text", FORCED)
def test_hostile_sql_forced_past_the_checker_changes_nothing(gconn, reader, text):
    before, session = _state(gconn), _session(reader)
    try:
        readonly.execute_readonly(reader, text, timeout_ms=300, row_cap=10)
    except (SqlRejected, QueryTimeout):
        pass
    finally:
        # session advisory locks outlive a rollback: the checker is what refuses them
        reader.conn.execute("SELECT pg_advisory_unlock_all()")
    assert reader.conn.info.transaction_status == TransactionStatus.IDLE
    assert _state(gconn) == before
    assert _session(reader) == session


def test_the_session_and_the_read_only_transaction_hold_on_their_own(reader):
    # each layer alone refuses a write: the transaction...
    with readonly.reader_transaction(reader, timeout_ms=1000) as conn, \
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("UPDATE docs SET content = 'x'")
    # ...the session user, even in a read-write transaction...
    with reader.conn.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.conn.execute("UPDATE docs SET content = 'x'")
    with reader.conn.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier("postgres")))
    # ...and the cursor (one SELECT, extended protocol)
    with pytest.raises(SqlRejected, match="syntax error"):
        readonly.execute_readonly(reader, "UPDATE docs SET content = 'x'", timeout_ms=1000,
                                  row_cap=10)
    with pytest.raises(SqlRejected, match="permission denied for table secret_notes"):
        readonly.execute_readonly(reader, "SELECT * FROM secret_notes", timeout_ms=1000,
                                  row_cap=10)
    with pytest.raises(SqlRejected, match="syntax error"):
        readonly.execute_readonly(reader, "SELECT 1; COMMIT; DELETE FROM docs",
                                  timeout_ms=1000, row_cap=10)
    with reader.conn.transaction(force_rollback=True), reader.conn.cursor(name="c") as cur, \
            pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
        cur.execute("SELECT 1; COMMIT; DELETE FROM docs")


# ------------------------------------------------------------------------- bounds
def test_a_slow_query_is_cancelled_at_its_timeout(reader):
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="200 ms"):
        readonly.execute_readonly(reader, "SELECT pg_sleep(5)", timeout_ms=200, row_cap=10)
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        run_readonly(reader, "SELECT count(*) FROM generate_series(1, 100000000) a "
                             "WHERE a % 7 = 0", timeout_ms=200)
    assert time.monotonic() - started < 2.0
    assert _session(reader)[2] == "0"


def test_sql_that_lifts_its_own_timeout_is_still_cancelled(reader):
    # statement_timeout is the query's to change once it fooled the checker: the first
    # batch of rows lifts it, the next FETCH (a statement of its own) sleeps. The client
    # cancels it anyway, a little after the limit.
    text = ("SELECT CASE WHEN n = 1 THEN set_config('statement_timeout', '0', true) "  # noqa: S608
            f"WHEN n <= {readonly.FETCH_ROWS} THEN 'x' ELSE CAST(pg_sleep(30) AS text) END "
            "FROM generate_series(1, 1000) AS n")
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        readonly.execute_readonly(reader, text, timeout_ms=300, row_cap=1000)
    assert time.monotonic() - started < readonly.CANCEL_GRACE_S + 3
    assert run_readonly(reader, "SELECT 1").rows == [(1,)]
    assert _session(reader)[2] == "0"


def test_rows_are_capped(reader):
    result = run_readonly(reader, "SELECT id, content FROM docs ORDER BY id", row_cap=3)
    assert result.columns == ["id", "content"]
    assert [r[1] for r in result.rows] == ["doc 0", "doc 1", "doc 2"]
    assert result.truncated and result.elapsed_ms > 0
    result = run_readonly(reader, "SELECT id FROM docs", row_cap=5)
    assert len(result.rows) == 5 and not result.truncated


def test_the_audits_huge_result_is_refused_in_seconds(reader):
    started = time.monotonic()
    with pytest.raises(SqlRejected) as caught:
        run_readonly(reader, HUGE, timeout_ms=30_000)
    assert time.monotonic() - started < 10
    assert isinstance(caught.value, readonly.ResultTooLarge)
    assert f"more than {readonly.DEFAULT_MAX_BYTES} bytes" in str(caught.value)
    # the server stopped it: no row of it was sent
    assert isinstance(caught.value.__cause__, psycopg.Error)
    assert run_readonly(reader, "SELECT 1").rows == [(1,)]


def test_the_client_never_holds_the_huge_result(reader_url):
    # a process of its own, so that its peak memory is this query's
    script = (
        "import resource, sys\n"
        "from pgfleet.errors import SqlRejected\n"
        "from pgfleet.text2sql import readonly, run_readonly\n"
        "reader = readonly.connect_reader(sys.argv[1])\n"
        "run_readonly(reader, 'SELECT 1')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    run_readonly(reader, sys.argv[2], timeout_ms=30000)\n"
        "except SqlRejected as exc:\n"
        "    print(type(exc).__name__)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    ran = subprocess.run([sys.executable, "-c", script, reader_url, HUGE], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    refused, grown_mb = ran.stdout.split()
    assert refused == "ResultTooLarge"
    assert int(grown_mb) < 30, f"the client grew by {grown_mb} MB"


def test_the_byte_bound_keeps_order_names_and_every_query_shape(reader):
    ordered = run_readonly(reader, "SELECT id FROM docs ORDER BY id DESC", max_bytes=10_000)
    assert [r[0] for r in ordered.rows] == [5, 4, 3, 2, 1] and ordered.bytes > 0
    same = run_readonly(reader, "SELECT 1 AS a, 'x' AS a, NULL AS b")
    assert same.columns == ["a", "a", "b"] and same.rows == [(1, "x", None)]
    shaped = run_readonly(reader, "WITH w AS (SELECT id FROM docs WHERE id < 3) "
                                  "SELECT id FROM w UNION ALL SELECT 10 ORDER BY 1")
    assert [r[0] for r in shaped.rows] == [1, 2, 10]
    # 10 rows of 1000 bytes: under a bound of 20000, over one of 5000
    text = "SELECT repeat('x', 1000) FROM generate_series(1, 10)"
    assert len(run_readonly(reader, text, max_bytes=20_000).rows) == 10
    with pytest.raises(readonly.ResultTooLarge, match="more than 5000 bytes"):
        run_readonly(reader, text, max_bytes=5_000)


def test_sql_that_tries_to_leave_the_bound_is_still_counted(reader):
    # SQL forced past the checker that closes the bound's subquery and joins many rows to
    # the one row it names: the server evaluates the bound for every row that goes out
    escape = ("SELECT 1 AS one) AS z CROSS JOIN generate_series(1, 100000) AS g(n) "
              "CROSS JOIN (SELECT repeat('x', 1000) AS r")
    started = time.monotonic()
    with pytest.raises(readonly.ResultTooLarge, match="more than 200000 bytes"):
        readonly.execute_readonly(reader, escape, timeout_ms=10_000, row_cap=100_000,
                                  max_bytes=200_000)
    assert time.monotonic() - started < 10


def test_the_client_counts_the_bytes_it_receives_too(reader):
    # the second bound, on a cursor the server does not bound: it stops after the batch
    # that crosses the bound, holding no more than that
    with readonly.reader_transaction(reader, timeout_ms=10_000) as conn, \
            conn.cursor(name="unbounded") as cur:
        cur.execute("SELECT repeat('x', 1000) FROM generate_series(1, 100000)")
        with pytest.raises(readonly.ResultTooLarge, match="more than 250000 bytes"):
            readonly._fetch(cur, 100_001, 250_000)  # noqa: SLF001 - the client's count
        assert cur.rownumber == 3 * readonly.FETCH_ROWS


def test_the_reader_has_work_mem_and_temp_file_limit(reader, gconn):
    configured = dict(gconn.execute(
        "SELECT split_part(s, '=', 1), split_part(s, '=', 2) FROM pg_db_role_setting d "
        "JOIN pg_roles r ON r.oid = d.setrole, unnest(d.setconfig) s "
        "WHERE r.rolname = %s AND d.setdatabase = 0", (READER_ROLE,)).fetchall())
    assert configured["temp_file_limit"] == readonly.TEMP_FILE_LIMIT
    assert configured["work_mem"] == readonly.WORK_MEM
    assert reader.conn.execute("SHOW temp_file_limit").fetchone()[0] == readonly.TEMP_FILE_LIMIT
    with readonly.reader_transaction(reader, timeout_ms=1000) as conn:
        assert conn.execute("SHOW work_mem").fetchone()[0] == readonly.WORK_MEM


def test_temporary_files_past_the_limit_are_refused(gconn, reader_url):
    gconn.execute(f"ALTER ROLE {READER_ROLE} SET temp_file_limit = '1MB'")
    try:
        with readonly.connect_reader(reader_url) as small:
            with pytest.raises(SqlRejected, match="temp_file_limit"):
                run_readonly(small, "SELECT count(DISTINCT md5(CAST(g AS text))) "
                                    "FROM generate_series(1, 500000) AS g", timeout_ms=30_000)
    finally:
        gconn.execute(sql.SQL("ALTER ROLE {} SET temp_file_limit = {}").format(
            sql.Identifier(READER_ROLE), sql.Literal(readonly.TEMP_FILE_LIMIT)))


def test_a_migrating_user_that_may_not_set_the_limits_is_only_warned(gconn):
    migration = next(MIGRATIONS.glob("0008_*.sql")).read_text("utf-8")
    notices: list[str] = []
    gconn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    with gconn.transaction(force_rollback=True):
        # a role without the settings yet, as on a server migrated for the first time
        gconn.execute(f"ALTER ROLE {READER_ROLE} RESET ALL")
        gconn.execute("CREATE ROLE sqlguard_app NOLOGIN CREATEROLE")
        gconn.execute("SET LOCAL ROLE sqlguard_app")
        gconn.execute(migration)
    assert any("could not set temp_file_limit" in n for n in notices), notices
    assert any("could not set work_mem" in n for n in notices), notices


def test_the_migration_keeps_the_settings_an_administrator_chose(gconn):
    migration = next(MIGRATIONS.glob("0008_*.sql")).read_text("utf-8")
    with gconn.transaction(force_rollback=True):
        gconn.execute(f"ALTER ROLE {READER_ROLE} SET temp_file_limit = '1GB'")
        gconn.execute(migration)
        config = gconn.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s",
                               (READER_ROLE,)).fetchone()[0]
    assert "temp_file_limit=1GB" in config and f"work_mem={readonly.WORK_MEM}" in config


# ------------------------------------------------------------------------- the allow-list
def test_every_allowed_function_is_a_built_in_and_only_two_are_volatile(gconn):
    from pgfleet.text2sql.allow_list import ALLOWED_FUNCTIONS

    rows = gconn.execute(
        "SELECT name, count(p.oid), bool_or(p.provolatile = 'v'), bool_or(p.prosecdef) "
        "FROM unnest(%s::text[]) AS name LEFT JOIN pg_proc p ON p.proname = name "
        "AND p.pronamespace = 'pg_catalog'::regnamespace GROUP BY name",
        (sorted(ALLOWED_FUNCTIONS),)).fetchall()
    assert [name for name, found, _, _ in rows if not found] == []
    assert sorted(name for name, _, volatile, _ in rows if volatile) == [
        "clock_timestamp", "random"]  # they read the clock and the generator, nothing else
    assert not any(definer for *_, definer in rows)


# ------------------------------------------------------------------------- the rest
def test_a_reader_in_a_transaction_is_refused(reader):
    reader.conn.execute("BEGIN")
    try:
        with pytest.raises(PgfleetError, match="no transaction open"):
            run_readonly(reader, "SELECT 1")
    finally:
        reader.conn.execute("ROLLBACK")
    assert run_readonly(reader, "SELECT 1").rows == [(1,)]
    assert reader.conn.info.transaction_status == TransactionStatus.IDLE


def test_explain_reports_the_servers_message(reader):
    verdict = check_sql("SELECT titel FROM docs", reader)
    assert not verdict.ok
    assert re.search(r'PostgreSQL rejected it: column "titel" does not exist',
                     verdict.reasons[0]), verdict.reasons
    verdict = check_sql("SELECT * FROM secret_notes", reader)
    assert "permission denied for table secret_notes" in verdict.reasons[0]
    verdict = check_sql("SELECT id FROM docs WHERE content LIKE '%doc%'", reader)
    assert verdict.ok and verdict.reasons == []
    assert reader.conn.info.transaction_status == TransactionStatus.IDLE


def test_explain_never_runs_the_query(reader):
    # planned only: a query that would fail when run passes EXPLAIN
    assert check_sql("SELECT 1 / (count(*) - count(*)) FROM docs", reader).ok
    with pytest.raises(SqlRejected, match="division by zero"):
        run_readonly(reader, "SELECT 1 / (count(*) - count(*)) FROM docs")


def test_cli_check_and_run(services, guard_url, reader_url):
    env = services.env(PGFLEET_DATABASE_URL=guard_url, PGFLEET_READER_URL=reader_url)
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


def test_cli_run_is_bounded_in_bytes(services, guard_url, reader_url):
    env = services.env(PGFLEET_DATABASE_URL=guard_url, PGFLEET_READER_URL=reader_url)
    started = time.monotonic()
    huge = run_cli("sql", "--run", HUGE, "--max-bytes", "100000", "--json", env=env)
    assert time.monotonic() - started < 30
    assert huge.returncode == 1, huge.stderr
    reasons = json.loads(huge.stdout)["reasons"]
    assert any("more than 100000 bytes" in r for r in reasons), reasons
    shown = run_cli("sql", "--run", HUGE, "--max-bytes", "100000", env=env)
    assert shown.returncode == 1 and "--max-bytes" in shown.stdout


def test_cli_without_a_reader_login_says_how_to_make_one(services, guard_url):
    env = services.env(PGFLEET_DATABASE_URL=guard_url)
    del env["PGFLEET_READER_URL"]
    ran = run_cli("sql", "--run", "SELECT 1", env=env)
    assert ran.returncode != 0
    assert "PGFLEET_READER_URL" in ran.stderr and "ALTER ROLE pgfleet_reader" in ran.stderr


def test_the_executor_surfaces_a_lost_connection(reader_url):
    session = readonly.connect_reader(reader_url)
    session.close()
    with pytest.raises((PgfleetError, psycopg.Error)):
        run_readonly(session, "SELECT 1")
