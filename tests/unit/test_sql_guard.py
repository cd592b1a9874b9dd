"""The SQL guard's allow-list, without a database: what may run and why the rest may not."""

from __future__ import annotations

import pytest

from pgfleet.errors import SqlRejected
from pgfleet.text2sql import check_sql, policy, run_readonly

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
    "SELECT date_trunc('month', created_at)::date AS m, count(*) FILTER (WHERE id > 2), "
    "round(avg(id)::numeric(10, 2), 2), coalesce(sum(id), 0), nullif(count(*), 0) "
    "FROM docs GROUP BY 1 ORDER BY 1 DESC NULLS LAST",
    "SELECT lag(id) OVER (ORDER BY id), percentile_cont(0.5) WITHIN GROUP (ORDER BY id) "
    "OVER (), extract(year FROM created_at), to_char(created_at, 'YYYY-MM') FROM docs",
    "SELECT g.n, s.x FROM generate_series(1, 3) AS g(n) CROSS JOIN LATERAL "
    "(SELECT g.n * 2) AS s(x)",
    "WITH a(x) AS (SELECT 1), b(y) AS MATERIALIZED (SELECT 2), c AS NOT MATERIALIZED "
    "(SELECT 3) SELECT x, y FROM a, b, c",
    "SELECT lower(content), upper(left(content, 3)), length(content), position('a' IN content), "
    "substring(content FROM 1 FOR 2), trim(content), split_part(content, ' ', 1), "
    "regexp_replace(content, '[0-9]', '', 'g'), concat_ws('-', id, content) FROM docs",
    "SELECT metadata ->> 'kind', jsonb_array_length(metadata -> 'tags'), "
    "CAST(created_at AS date), now() - interval '3 days', age(created_at) FROM docs",
    "SELECT id FROM docs WHERE id = ANY (ARRAY[1, 2]) AND EXISTS (SELECT 1) "
    "AND content ILIKE '%x%' AND created_at BETWEEN '2024-01-01' AND now()",
    "WITH pg_like AS (SELECT 1 AS n) SELECT n FROM pg_like",
    "SELECT 'ts_stat(1); set_config(x)' AS quoted, \"ts_stat\".word FROM docs AS \"ts_stat\"(word)",
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
    ("SELECT currval('docs_id_seq')", "currval" + CALL),
    ("SELECT current_setting('data_directory')", "current_setting" + CALL),
    ("SELECT version(), current_database()", "version" + CALL),
    ("SELECT * FROM docs TABLESAMPLE SYSTEM (10)", "system" + CALL),
    ("SELECT id FROM docs GROUP BY ROLLUP (id)", "rollup" + CALL),
    ("SELECT rolname FROM pg_roles", "Reading pg_roles is not allowed"),
    ("SELECT * FROM pg_catalog.pg_authid", "Reading pg_catalog.pg_authid is not allowed"),
    ("SELECT query FROM docs, pg_stat_activity", "Reading pg_stat_activity is not allowed"),
    ("SELECT * FROM information_schema.tables", "Reading information_schema.tables"),
    ("SELECT * FROM pg_toast.pg_toast_2619", "Reading pg_toast.pg_toast_2619"),
]

#: the audit's query: ts_stat runs SQL given as text, and inside it set_config('role', ...)
#: undoes SET ROLE; the privileged session it reached listed pg_authid
AUDIT = ("SELECT b.word FROM ts_stat('SELECT array_to_tsvector(ARRAY[set_config(''role'',"
         "''none'',true)])') a\nCROSS JOIN LATERAL ts_stat('SELECT array_to_tsvector("
         "array_agg(rolname)) FROM pg_authid WHERE '||(a.nentry>0)::text) b")

#: ways around a deny-list: functions that run SQL text, signal or lock, and spellings of a
#: name that a list of names does not see. (SQL, what one of the reasons must say)
BYPASSES = [
    (AUDIT, "ts_stat() is not allowed"),
    ("SELECT * FROM ts_stat('SELECT to_tsvector(rolname) FROM pg_authid')",
     "ts_stat() is not allowed"),
    ("SELECT ts_rewrite('a & b'::tsquery, 'SELECT rolname::tsquery, ''x'' FROM pg_roles')",
     "ts_rewrite() is not allowed"),
    ("SELECT query_to_xml('SELECT rolname FROM pg_authid', true, true, '')",
     "query_to_xml() is not allowed"),
    ("SELECT table_to_xml('pg_authid', true, true, '')", "table_to_xml() is not allowed"),
    ("SELECT query_to_xmlschema('SELECT 1', true, true, '')",
     "query_to_xmlschema() is not allowed"),
    ("SELECT cursor_to_xml('c', 1, true, true, '')", "cursor_to_xml() is not allowed"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
     "pg_terminate_backend() is not allowed"),
    ("SELECT pg_cancel_backend(1)", "pg_cancel_backend() is not allowed"),
    ("SELECT pg_advisory_lock(1)", "pg_advisory_lock() is not allowed"),
    ("SELECT pg_advisory_lock_shared(1)", "pg_advisory_lock_shared() is not allowed"),
    ("SELECT pg_advisory_xact_lock(1, 2)", "pg_advisory_xact_lock() is not allowed"),
    ("SELECT pg_try_advisory_lock(1)", "pg_try_advisory_lock() is not allowed"),
    ("SELECT pg_advisory_unlock_all()", "pg_advisory_unlock_all() is not allowed"),
    ("SELECT set_config('role', 'none', true)", "set_config() is not allowed"),
    ("SELECT txid_current()", "txid_current() is not allowed"),
    ("SELECT lo_get(1)", "lo_get() is not allowed"),
    ("SELECT \"ts_stat\"('SELECT 1')", '"ts_stat"() is not allowed'),
    ("SELECT * FROM \"ts_stat\"('SELECT 1')", '"ts_stat"() is not allowed'),
    ("SELECT U&\"\\0074s_stat\"('SELECT 1')", 's_stat"() is not allowed'),
    ("SELECT * FROM U&\"\\0074s_stat\"('SELECT 1')", "could not be parsed"),
    ("SELECT pg_catalog . ts_stat ('SELECT 1')", "pg_catalog.ts_stat() is not allowed"),
    ("SELECT * FROM pg_catalog.ts_stat('SELECT 1')", "pg_catalog.ts_stat() is not allowed"),
    ("SELECT pg_catalog.lower('X')", "pg_catalog.lower() is not allowed"),
    ("SELECT ts_stat /* c */ ('SELECT 1')", "ts_stat() is not allowed"),
    ("SELECT ts_stat -- c\n('SELECT 1')", "ts_stat() is not allowed"),
    ("SELECT * FROM ts_stat/**/('SELECT 1') AS t", "ts_stat() is not allowed"),
    ('SELECT "Ts_Stat"(\'SELECT 1\')', '"Ts_Stat"() is not allowed'),
    # a WITH query or an alias named like the function does not make the call an alias
    ("WITH ts_stat(w) AS (SELECT 1) SELECT 1, ts_stat('SELECT 1') AS y FROM ts_stat",
     "ts_stat() is not allowed"),
    ("SELECT * FROM docs AS ts_stat(w), ts_stat('SELECT 1') AS x", "ts_stat() is not allowed"),
    ("SELECT 1 OPERATOR(pg_catalog.+) 2", "operator() is not allowed"),
]

#: casts whose input function looks things up or is not a plain value type
CASTS = [
    "SELECT 'pg_authid'::regclass",
    "SELECT CAST('pg_authid' AS regclass)",
    "SELECT regclass 'pg_authid'",
    "SELECT 'set_config'::regproc",
    "SELECT 'ts_stat(text)'::regprocedure::oid",
    "SELECT 'x'::xml",
    "SELECT CAST(content AS mytype) FROM docs",
    "SELECT content::public.mytype FROM docs",
    "SELECT 1::oid",
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


@pytest.mark.parametrize(("sql", "reason"), BYPASSES)
def test_functions_off_the_allow_list_are_refused_however_spelled(sql, reason):
    verdict = check_sql(sql)
    assert not verdict.ok, verdict.sql
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_quoted_name_that_sqlglot_knows_runs_as_the_built_in():
    # sqlglot reads "Lower"(x) as its lower(): what runs is the built-in, not "Lower"
    assert check_sql('SELECT "Lower"(\'X\')').sql == "SELECT LOWER('X')"


def test_the_audit_query_is_refused_with_each_reason():
    reasons = check_sql(AUDIT).reasons
    assert any(r.startswith("Calling ts_stat() is not allowed") for r in reasons), reasons


@pytest.mark.parametrize("sql", CASTS)
def test_casts_only_to_plain_value_types(sql):
    verdict = check_sql(sql)
    assert not verdict.ok, verdict.sql
    assert any("Casting to" in r and "is not allowed" in r for r in verdict.reasons), \
        verdict.reasons


def test_unicode_escaped_strings_are_refused():
    verdict = check_sql("SELECT U&'d\\0061t\\+000061'")
    assert not verdict.ok and "U&" in verdict.reasons[0]


@pytest.mark.parametrize("name", ["pg_sleep", "PG_SLEEP", "pg_catalog.lower", '"lower"',
                                  "ts_stat", "ts_rewrite", "set_config", "currval",
                                  "query_to_xml", "pg_advisory_lock", "dblink", "lo_import",
                                  "pg_read_file", "current_setting", "sleep_stats"])
def test_functions_not_on_the_allow_list(name):
    assert not policy.allowed_function(name)


@pytest.mark.parametrize("name", ["count", "COUNT", "now", "lower", "date_trunc", "to_char",
                                  "row_number", "generate_series", "jsonb_array_length",
                                  "string_agg", "percentile_cont", "repeat"])
def test_ordinary_functions_are_allowed(name):
    assert policy.allowed_function(name)
    assert name.lower() in policy.ALLOWED_FUNCTIONS


def test_run_readonly_refuses_before_touching_the_connection():
    with pytest.raises(SqlRejected) as caught:
        run_readonly(None, "COMMIT; DELETE FROM docs")  # type: ignore[arg-type]
    assert "Only one statement" in caught.value.reasons[0]
    assert "Only one statement" in str(caught.value)


@pytest.mark.parametrize(("text", "reason"), [
    ("SELECT TS_STAT('SELECT 1')", "ts_stat() is not allowed"),
    ("SELECT \"TS_STAT\"('SELECT 1')", '"TS_STAT"() is not allowed'),
    ("SELECT pg_catalog.LOWER('X')", "pg_catalog.lower() is not allowed"),
    ("SELECT 1, ts_stat('x') AS y FROM docs AS ts_stat(w)", "ts_stat() is not allowed"),
    ("WITH a(x) AS (SELECT 1) SELECT * FROM a, b(x)", "b() is not allowed"),
    ("SELECT * FROM f() AS (a INT), ts_stat('x')", "ts_stat() is not allowed"),
    ("SELECT filter(1), over(2), materialized(3)", "filter() is not allowed"),
    ("SELECT x FROM t WHERE y = U&'\\0061'", "U&'...' strings are not allowed"),
    ("SELECT escape('x'), 1", "escape() is not allowed"),
    ("SELECT join('x'), like(1), a = is(2)", "join() is not allowed"),
    ("SELECT 1, like(1)", "like() is not allowed"),
    ("SELECT * FROM t WHERE (is(1))", "is() is not allowed"),
])
def test_the_token_scan_alone_finds_calls_in_the_sql_that_runs(text, reason):
    # the second check, on its own: what the tree check might have read differently
    assert any(reason in r for r in policy.call_reasons(text)), policy.call_reasons(text)


@pytest.mark.parametrize("text", [
    "WITH a(x) AS (SELECT 1), b(y) AS MATERIALIZED (SELECT 2), c(z) AS (VALUES (3)) "
    "SELECT * FROM a, b, c",
    "SELECT * FROM GENERATE_SERIES(1, 3) AS g(n), LATERAL (SELECT 1) AS s(x)",
    "SELECT CAST(x AS DECIMAL(10, 2)), COUNT(*) FILTER(WHERE x > 1), "
    "PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x), SUM(x) OVER (PARTITION BY y) FROM t",
    "SELECT 'ts_stat(1)', x IN (1, 2), EXISTS(SELECT 1), ARRAY(SELECT 1), ROW(1, 2) FROM t",
    "SELECT * FROM a JOIN (SELECT 1) AS b ON TRUE LEFT JOIN (SELECT 2) AS c ON TRUE "
    "WHERE x LIKE ('a%') AND y NOT ILIKE ('b') AND z IS (NULL)",
])
def test_the_token_scan_lets_keyword_constructs_and_alias_columns_through(text):
    assert policy.call_reasons(text) == []
