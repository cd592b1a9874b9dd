"""The SQL guard's allow-list, without a database: what may run and why the rest may not."""

from __future__ import annotations

import pytest

from workers.errors import SqlRejected
from workers.text2sql import check_sql, run_readonly
from workers.text2sql.policy import denied_function

ACCEPTED = [
    "SELECT * FROM orders WHERE EXISTS (SELECT FROM customers)",
    "SELECT 1",
    "SELECT 1;",
    "  select id, content from docs where id > 3 order by id limit 10 ;  ",
    "SELECT d.id, e.id FROM docs d JOIN docs e ON d.id = e.id LEFT JOIN docs f ON f.id = d.id",
    "WITH recent AS (SELECT * FROM docs WHERE created_at > now() - interval '1 day') "
    "SELECT count(*) FROM recent",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "SELECT id FROM docs UNION SELECT id FROM docs INTERSECT SELECT 1 EXCEPT SELECT 2",
    "SELECT id, row_number() OVER (PARTITION BY metadata->>'kind' ORDER BY created_at) FROM docs",
    "SELECT * FROM docs WHERE id IN (SELECT id FROM docs WHERE content ILIKE '%a%')",
    "SELECT (SELECT max(id) FROM docs) AS top, exists(SELECT 1 FROM docs) AS any_docs",
    "SELECT currval('docs_id_seq')",
    "SELECT 'delete from docs; drop table docs' AS data",
    "SELECT 'pg_sleep(10)' AS s, $$nextval('x')$$ AS t",
    "SELECT * FROM docs WHERE content = 'COMMIT; DELETE FROM docs'",
    "SELECT * FROM docs WHERE content ~ '\\d+'",
    "SELECT date_trunc('day', created_at), count(*) FROM docs GROUP BY 1 HAVING count(*) > 1",
    "SELECT generate_series(1, 3)",
    "(SELECT 1)",
    "SELECT 1 -- a comment\n",
]

WRITES = "is not allowed: only a read-only query"
NOT_ALLOWED = "is not allowed: only read-only queries may run"
CALL = "() is not allowed"

REJECTED = [
    ("SELECT", "The query selects no columns."),
    ("SELECT FROM orders", "The query selects no columns."),
    ("", "empty"),
    (";", "empty"),
    ("SELECT FROM WHERE (", "could not be parsed"),
    ("WITH x AS (DELETE FROM docs RETURNING *) SELECT * FROM x", "The WITH query x is DELETE"),
    ("WITH x AS (UPDATE docs SET content = '' RETURNING id) SELECT 1", "UPDATE " + NOT_ALLOWED),
    ("WITH x AS (INSERT INTO docs (content) VALUES ('a') RETURNING id) SELECT 1", "INSERT"),
    ("SELECT * FROM docs WHERE id IN (WITH d AS (DELETE FROM docs RETURNING id) "
     "SELECT id FROM d)", "DELETE " + NOT_ALLOWED),
    ("COMMIT; DELETE FROM docs", "Only one statement may run; this has 2 (COMMIT, DELETE)"),
    ("SELECT 1; SELECT 2", "Only one statement"),
    ("SELECT 1; COMMIT;", "Only one statement"),
    ("select 1 /* ; */ ; drop table docs", "Only one statement"),
    ("SELECT '\\'; DELETE FROM docs; --'", "Only one statement"),
    ("SET TRANSACTION READ WRITE", "SET " + WRITES),
    ("SET search_path = evil", "SET " + WRITES),
    ("RESET ALL", "RESET " + WRITES),
    ("BEGIN", "BEGIN " + WRITES),
    ("ROLLBACK", "ROLLBACK " + WRITES),
    ("SELECT pg_sleep(10)", "pg_sleep" + CALL),
    ("select PG_CATALOG.pg_sleep(1)", "pg_sleep" + CALL),
    ('SELECT pg_catalog."pg_sleep"(1)', "pg_sleep" + CALL),
    ("SELECT pg_sleep_for('1 minute')", "pg_sleep_for" + CALL),
    ("SELECT * FROM docs WHERE id = 1 OR pg_sleep(1) IS NULL", "pg_sleep" + CALL),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file" + CALL),
    ("SELECT pg_ls_dir('.')", "pg_ls_dir" + CALL),
    ("SELECT * INTO t FROM docs", "SELECT ... INTO is not allowed"),
    ("SELECT * FROM docs FOR UPDATE", "FOR UPDATE / FOR SHARE"),
    ("SELECT * FROM docs FOR SHARE SKIP LOCKED", "FOR UPDATE / FOR SHARE"),
    ("SELECT * FROM (SELECT * FROM docs FOR NO KEY UPDATE) s", "FOR UPDATE / FOR SHARE"),
    ("COPY docs TO '/tmp/x'", "COPY " + WRITES),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "COPY " + WRITES),
    ("DO $$ BEGIN DELETE FROM docs; END $$", "DO " + WRITES),
    ("CREATE TABLE x AS SELECT 1", "CREATE " + WRITES),
    ("DROP TABLE docs", "DROP " + WRITES),
    ("ALTER TABLE docs ADD COLUMN x int", "ALTER " + WRITES),
    ("TRUNCATE docs", "TRUNCATE " + WRITES),
    ("INSERT INTO docs (content) VALUES ('x')", "INSERT " + WRITES),
    ("UPDATE docs SET content = 'x'", "UPDATE " + WRITES),
    ("DELETE FROM docs", "DELETE " + WRITES),
    ("MERGE INTO docs USING docs s ON true WHEN MATCHED THEN DELETE", "MERGE " + WRITES),
    ("GRANT ALL ON docs TO public", "GRANT " + WRITES),
    ("SELECT set_config('x', 'y', false)", "set_config" + CALL),
    ("SELECT nextval('s')", "nextval" + CALL),
    ("SELECT setval('s', 1)", "setval" + CALL),
    ("SELECT lo_import('/etc/passwd')", "lo_import" + CALL),
    ("SELECT lo_export(1, '/tmp/x')", "lo_export" + CALL),
    ("SELECT query_to_xml('delete from docs', true, true, '')", "query_to_xml" + CALL),
    ("SELECT table_to_xml('docs', true, true, '')", "table_to_xml" + CALL),
    ("SELECT * FROM dblink('dbname=x', 'delete from docs') AS t(a int)", "dblink" + CALL),
    ("SELECT dblink_exec('dbname=x', 'delete from docs')", "dblink_exec" + CALL),
    ("SELECT pg_advisory_lock(1)", "pg_advisory_lock" + CALL),
    ("SELECT pg_try_advisory_xact_lock(1)", "pg_try_advisory_xact_lock" + CALL),
    ("SELECT pg_terminate_backend(1)", "pg_terminate_backend" + CALL),
    ("SELECT pg_reload_conf()", "pg_reload_conf" + CALL),
    ("SELECT pg_notify('c', 'x')", "pg_notify" + CALL),
    ("SELECT pg_create_restore_point('x')", "pg_create_restore_point" + CALL),
    ("SELECT pg_logical_emit_message(true, 'x', 'y')", "pg_logical_emit_message" + CALL),
    ("SELECT count(*) FROM (SELECT pg_sleep(1)) s", "pg_sleep" + CALL),
    ("EXPLAIN ANALYZE DELETE FROM docs", "EXPLAIN " + WRITES),
    ("VACUUM", "VACUUM " + WRITES),
    ("LOCK docs", "LOCK " + WRITES),
    ("LISTEN x", "nrecognised statement " + WRITES),
    ("PREPARE p AS DELETE FROM docs", "PREPARE " + WRITES),
    ("CALL p()", "CALL " + WRITES),
    ("VALUES (1)", "VALUES " + WRITES),
]

HOSTILE = [sql for sql, _ in REJECTED if sql.strip(" ;")]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_read_only_queries_pass(sql):
    verdict = check_sql(sql)
    assert verdict.ok, verdict.reasons
    assert verdict.reasons == []
    assert check_sql(verdict.sql).sql == verdict.sql  # what runs reads back the same


@pytest.mark.parametrize(("sql", "reason"), REJECTED)
def test_everything_else_is_rejected_with_a_reason(sql, reason):
    verdict = check_sql(sql)
    assert not verdict.ok
    assert verdict.reasons
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_the_normalized_sql_is_one_statement_without_comments():
    verdict = check_sql("select id /* ; drop table docs */ from docs -- ; delete\n ;")
    assert verdict.ok
    assert verdict.sql == "SELECT id FROM docs"


def test_string_literals_are_data_not_calls():
    verdict = check_sql("SELECT 'pg_sleep(1)', 'x' || 'nextval(' FROM docs")
    assert verdict.ok, verdict.reasons


@pytest.mark.parametrize("name", ["pg_sleep", "PG_SLEEP", "pg_catalog.pg_sleep", '"pg_sleep"',
                                  "dblink_connect", "pg_advisory_unlock_all", "lo_unlink",
                                  "query_to_xml_and_xmlschema", "pg_file_write"])
def test_denied_functions(name):
    assert denied_function(name)


@pytest.mark.parametrize("name", ["currval", "count", "now", "lower", "pg_size_pretty",
                                  "sleep_stats"])
def test_ordinary_functions_are_allowed(name):
    assert not denied_function(name)


def test_run_readonly_refuses_before_touching_the_connection():
    with pytest.raises(SqlRejected) as caught:
        run_readonly(None, "COMMIT; DELETE FROM docs")  # type: ignore[arg-type]
    assert "Only one statement" in caught.value.reasons[0]
    assert "Only one statement" in str(caught.value)
