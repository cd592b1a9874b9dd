-- Per-version vector indexes and the locks their creation and removal wait on.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: index_state
-- An index by name: whether it is valid, and the backend building it now (if any).
SELECT i.indisvalid AS valid, p.pid AS building_pid
FROM pg_class c
JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_stat_progress_create_index p ON p.index_relid = c.oid
WHERE c.oid = to_regclass(%(name)s);

-- name: version_index_create
-- Template (identifiers and constants composed with psycopg.sql, as DDL takes no bound
-- values): one HNSW index per embedding version, on the version's own dimension. Searches
-- use the same expression: ORDER BY embedding::vector(<dims>) <=> query WHERE version_id = <id>.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON embeddings
    USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE version_id = {version_id};

-- name: source_index_create
-- Template, as version_index_create: one HNSW index per source and embedding version, on
-- the version's own dimension. A source's search uses the same expression and predicate:
-- ORDER BY embedding::vector(<dims>) <=> query WHERE source_id = <s> AND version_id = <v>.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON source_chunks
    USING hnsw ((embedding::vector({dims})) vector_cosine_ops)
    WHERE source_id = {source_id} AND version_id = {version_id};

-- name: source_hnsw_indexes
-- A source's HNSW indexes (one per version it was embedded with), by name.
SELECT c.relname AS name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'source_chunks'::regclass
  AND c.relname ~ ('^source_chunks_hnsw_s' || %(source_id)s::integer || '_v[0-9]+$');

-- name: index_drop_concurrently
-- Template: {index} is composed with psycopg.sql.
DROP INDEX CONCURRENTLY IF EXISTS {index};

-- name: get_lock_timeout
SELECT current_setting('lock_timeout');

-- name: set_lock_timeout
-- is_local true: until the transaction ends; false: for the session.
SELECT set_config('lock_timeout', %(value)s, %(is_local)s);

-- name: relation_lockers
-- The transactions (other than this session's) holding a lock of one of these modes on a
-- table, with what they are doing. A prepared transaction has no pid.
SELECT DISTINCT ON (l.virtualtransaction)
       l.virtualtransaction, l.pid, a.state, a.application_name, a.xact_start,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       left(a.query, 200) AS query
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = %(relation)s::regclass
  AND l.mode = ANY(%(modes)s::text[])
  AND l.pid IS DISTINCT FROM pg_backend_pid()
ORDER BY l.virtualtransaction, a.xact_start;

-- name: transactions_still_open
-- Which of these virtual transactions have not ended (every transaction holds locks).
SELECT DISTINCT virtualtransaction FROM pg_locks
WHERE virtualtransaction = ANY(%(vxids)s::text[]);
