-- Text-to-SQL: the guarded reader session, schema introspection, examples and the defog databases.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: text2sql_begin_read_only
-- Text-to-SQL: every checked query runs in a transaction like this one, always rolled back,
-- in a session of the reader login.
BEGIN READ ONLY;

-- name: text2sql_read_only
SET TRANSACTION READ ONLY;

-- name: text2sql_limits
-- set_config(..., true) is SET LOCAL with bound values: the limits end with the transaction.
-- Strings are read as the checker reads them: backslashes are plain characters.
SELECT set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('work_mem', %(work_mem)s, true),
       set_config('standard_conforming_strings', 'on', true);

-- name: text2sql_whoami
SELECT session_user::text, current_user::text, current_setting('transaction_read_only');

-- name: text2sql_reader_session
-- Who a reader session is: guarded SQL runs only as a login with the reader's rights and no
-- more (no superuser or other attribute, no role besides the reader).
SELECT session_user::text, current_database()::text, r.rolsuper, r.rolcreaterole,
       r.rolcreatedb, r.rolreplication, r.rolbypassrls, reader.oid IS NOT NULL,
       COALESCE(pg_has_role(session_user, reader.oid, 'USAGE'), false),
       ARRAY(SELECT m.rolname::text FROM pg_roles m
             WHERE pg_has_role(session_user, m.oid, 'MEMBER')
               AND m.rolname <> session_user AND m.rolname <> %(reader)s
             ORDER BY 1),
       current_setting('temp_file_limit')
FROM pg_roles r LEFT JOIN pg_roles reader ON reader.rolname = %(reader)s
WHERE r.rolname = session_user;

-- name: text2sql_result_bound
-- The schema of the function that bounds a guarded result in bytes (NULL: not installed).
SELECT n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.oid = to_regprocedure('pgfleet_result_bytes_v1(bigint, bigint)');

-- name: text2sql_bounded_result
-- A template ({query} is the checked SQL, {bound} the function above, {max_bytes} a literal):
-- the query's rows, in its order, each one's size as text added to a running total that
-- stops the query past max_bytes. The newlines keep a trailing comment inside the query.
SELECT pgfleet_q.* FROM (
{query}
) AS pgfleet_q WHERE {bound}(octet_length(CAST(pgfleet_q.* AS text)), {max_bytes});

-- name: text2sql_explain
-- A template ({query} is the checked SQL): its plan, never run.
EXPLAIN {query};

-- name: text2sql_insert_examples
-- Examples already stored (same question, SQL and database) are skipped.
INSERT INTO text2sql_examples (question, sql, db_name, source, template)
SELECT * FROM unnest(%(questions)s::text[], %(sqls)s::text[], %(db_names)s::text[],
                     %(sources)s::text[], %(templates)s::text[])
ON CONFLICT DO NOTHING;

-- name: text2sql_search_path
SELECT current_setting('search_path');

-- name: text2sql_set_search_path
-- For the session: checking examples that target another schema of this database.
SELECT set_config('search_path', %(search_path)s, false);

-- name: text2sql_schema_exists
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(name)s);

-- name: text2sql_database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s AND datallowconn);

-- name: text2sql_tables
-- Text-to-SQL schema introspection: the tables and views a question may be about.
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm')
  AND NOT c.relispartition AND NOT (c.relname = ANY(%(exclude)s))
ORDER BY array_position(%(schemas)s, n.nspname::text), c.relname;

-- name: text2sql_columns
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY n.nspname, c.relname, a.attnum;

-- name: text2sql_keys
-- Primary and foreign keys, their columns in key order.
SELECT n.nspname, c.relname, k.contype::text,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i),
       rn.nspname, rc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.i)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = k.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND k.contype IN ('p', 'f')
ORDER BY n.nspname, c.relname, k.conname;

-- name: text2sql_user_schemas
-- Schemas holding user tables: not the system's.
SELECT nspname FROM pg_namespace
WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'
ORDER BY nspname = 'public' DESC, nspname;

-- name: text2sql_quote_idents
-- Identifiers quoted only where SQL needs it (upper case, spaces, reserved words).
SELECT name, quote_ident(name) FROM unnest(%(names)s::text[]) AS name;

-- name: text2sql_column_stats
-- A template ({table}, {column} are composed identifiers): rows and distinct values.
SELECT count(*), count(DISTINCT {column}) FROM {table};

-- name: text2sql_sample_values
-- A template: real values of a column, a deterministic pseudo-random pick for a seed.
SELECT {column} FROM {table} WHERE {column} IS NOT NULL
GROUP BY {column} ORDER BY md5({column}::text || %(seed)s) LIMIT %(limit)s;

-- name: text2sql_matching_values
-- A template ({col}, {tbl} are composed identifiers): the values of a text column that are,
-- lower-cased, among the question's runs of words.
SELECT DISTINCT {col} FROM {tbl} WHERE lower({col}) = ANY(%s) LIMIT 100;

-- name: defog_database_comment
-- The defog benchmark: what a loaded database says it was loaded from.
SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %(name)s;

-- name: defog_drop_database
-- A template ({db} is a composed identifier), as are the three below.
DROP DATABASE IF EXISTS {db} WITH (FORCE);

-- name: defog_create_database
CREATE DATABASE {db};

-- name: defog_comment_database
COMMENT ON DATABASE {db} IS {comment};

-- name: defog_grant_reader
-- The reader role runs the benchmark's SQL, gold and generated alike.
GRANT USAGE ON SCHEMA {schema} TO pgfleet_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO pgfleet_reader;

-- name: text2sql_training_examples
-- Examples for the connected database (db_name NULL), in a stable order.
SELECT question, sql, template FROM text2sql_examples
WHERE db_name IS NULL ORDER BY id;

-- name: text2sql_other_examples
SELECT count(*) FROM text2sql_examples WHERE db_name IS NOT NULL;
