-- Sources (a user's table the fleet embeds, chunk by chunk): the catalog checks of `source
-- add`, the source's rows, the producer's claim, the worker's fetch and write, the
-- reconciler's checks and search over a source's chunks.
-- Values are bound parameters. A few queries name the source's view ({view}) and its key's
-- type ({key_type}): composed identifiers taken from the sources row, which `source add`
-- checked against the catalog (pgfleet.sources.catalog).

-- name: fleet_schema
-- The schema the fleet's tables live in (the triggers' functions name it explicitly).
SELECT n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = 'source_pending'::regclass;

-- name: source_table
-- The table a source names, as PostgreSQL resolves the name (to_regclass: NULL when there
-- is none), with what this role may do on it.
SELECT c.oid, n.nspname AS schema_name, c.relname AS table_name, c.relkind AS kind,
       has_table_privilege(c.oid, 'SELECT') AS select,
       has_table_privilege(c.oid, 'TRIGGER') AS trigger,
       pg_has_role(c.relowner, 'USAGE') AS owner,
       current_user AS role
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%(table)s);

-- name: table_primary_key
SELECT a.attname AS name, format_type(a.atttypid, NULL) AS type
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY array_position(i.indkey::smallint[], a.attnum);

-- name: table_columns
SELECT a.attname AS name, format_type(a.atttypid, NULL) AS type
FROM pg_attribute a
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: embedding_model_exists
SELECT 1 FROM model_versions WHERE kind = 'embedding' AND name = %(name)s LIMIT 1;

-- name: text_config_exists
SELECT 1 FROM pg_ts_config c WHERE c.cfgname = %(name)s AND pg_ts_config_is_visible(c.oid);

-- name: source_triggers
-- A source's triggers (by their names), wherever its table now is (renamed, moved).
SELECT t.tgname, n.nspname, c.relname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = ANY (%(names)s::text[]) AND NOT t.tgisinternal;

-- name: insert_source
INSERT INTO sources (name, schema_name, table_name, key_column, key_type, columns, template,
                     model_name, chunking, chunk_tokens, overlap, text_config, always)
VALUES (%(name)s, %(schema_name)s, %(table_name)s, %(key_column)s, %(key_type)s,
        %(columns)s, %(template)s, %(model_name)s, %(chunking)s, %(chunk_tokens)s,
        %(overlap)s, %(text_config)s, %(always)s)
RETURNING *;

-- name: delete_source
-- Its pending rows, chunks and failures go with it (ON DELETE CASCADE); its change log's
-- rows (no foreign key there) are deleted here.
WITH changes AS (
    DELETE FROM source_changes WHERE source_id = %(source_id)s
)
DELETE FROM sources WHERE id = %(source_id)s;

-- name: source_by_name
SELECT * FROM sources WHERE name = %(name)s;

-- name: source_by_id
SELECT * FROM sources WHERE id = %(source_id)s;

-- name: all_sources
SELECT * FROM sources ORDER BY name;

-- name: list_sources
-- Every source with its counts: rows embedded (for any version), chunks, rows pending
-- (queued, and changed but not yet queued) and rows failed.
SELECT s.*,
       (SELECT count(DISTINCT c.row_key) FROM source_chunks c WHERE c.source_id = s.id)
           AS rows_embedded,
       (SELECT count(*) FROM source_chunks c WHERE c.source_id = s.id) AS chunks,
       (SELECT count(*) FROM source_pending p WHERE p.source_id = s.id)
           + (SELECT coalesce(sum(cardinality(l.row_keys)), 0) FROM source_changes l
              WHERE l.source_id = s.id) AS pending,
       (SELECT count(*) FROM source_failures f WHERE f.source_id = s.id) AS failed
FROM sources s
ORDER BY s.name;

-- name: source_backfill
-- The source's rows with no chunks of their current text (none, or of older text), no
-- pending row and no recorded failure, for its active versions: queued behind live
-- changes (priority 1). Run when the source is added and by the reconciler (a version
-- activated, rows loaded or changed with triggers off).
INSERT INTO source_pending (source_id, row_key, version_id, content_hash, priority)
SELECT %(source_id)s, s.row_key, v.id, pgfleet_content_hash_v1(s.body), 1
FROM {view} s
CROSS JOIN model_versions v
WHERE v.kind = 'embedding' AND v.active
  AND (%(model_name)s::text IS NULL OR v.name = %(model_name)s::text)
  AND (%(version_id)s::integer IS NULL OR v.id = %(version_id)s::integer)
  AND NOT EXISTS (SELECT 1 FROM source_chunks c
                  WHERE c.source_id = %(source_id)s AND c.version_id = v.id
                    AND c.row_key = s.row_key AND c.chunk = 0
                    AND c.content_hash = pgfleet_content_hash_v1(s.body))
  AND NOT EXISTS (SELECT 1 FROM source_pending p
                  WHERE p.source_id = %(source_id)s AND p.row_key = s.row_key
                    AND p.version_id = v.id)
  AND NOT EXISTS (SELECT 1 FROM source_failures f
                  WHERE f.source_id = %(source_id)s AND f.row_key = s.row_key
                    AND f.version_id = v.id)
ON CONFLICT DO NOTHING;

-- name: source_orphans
-- Pending rows, chunks and failures of rows that no longer exist: deleted with triggers off
-- (replication, session_replication_role = replica, a restore).
WITH pending AS (
    DELETE FROM source_pending p
    WHERE p.source_id = %(source_id)s
      AND NOT EXISTS (SELECT 1 FROM {view} s WHERE s.key = p.row_key::{key_type})
    RETURNING 1
), chunks AS (
    DELETE FROM source_chunks c
    WHERE c.source_id = %(source_id)s
      AND NOT EXISTS (SELECT 1 FROM {view} s WHERE s.key = c.row_key::{key_type})
    RETURNING 1
), failures AS (
    DELETE FROM source_failures f
    WHERE f.source_id = %(source_id)s
      AND NOT EXISTS (SELECT 1 FROM {view} s WHERE s.key = f.row_key::{key_type})
    RETURNING 1
)
SELECT (SELECT count(*) FROM pending), (SELECT count(*) FROM chunks),
       (SELECT count(*) FROM failures);

-- name: changed_sources
-- The sources with changes in the log.
SELECT DISTINCT source_id FROM source_changes;

-- name: lock_source_take
-- One take of a source's change log at a time (two producers' takes could otherwise apply
-- their texts' hashes out of order): a transaction lock, tried, not waited for. A statement
-- of its own, before the take, so that the take's snapshot is newer than the lock.
SELECT pg_try_advisory_xact_lock(%(lock_class)s::integer, %(source_id)s::integer) AS locked;

-- name: take_source_changes
-- The producer turns a source's change log into pending rows: change rows up to
-- %(max_keys)s keys (at least one row; only those are locked, SKIP LOCKED, and deleted),
-- whose rows still exist, queued per active version of the source's model with their
-- current text's hash. A row and version with no pending row whose chunks are of that very
-- text, or whose failure is (a change and its undo; a change back to what failed), queue
-- nothing. A pending row is reset to the current text, as a new live job (a new queued_at,
-- so that a worker's write or failure of the old job no longer matches), when its text
-- differs, when a worker has started it (it may have read any text since), or when it
-- waits as backfill; otherwise it is left as it is (its job, attempts and backoff stand).
-- A reset keeps the attempts spent on the same text. The row's failure is cleared.
WITH candidates AS (
    SELECT c.ctid AS id,
           sum(cardinality(c.row_keys)) OVER (ROWS UNBOUNDED PRECEDING)
               - cardinality(c.row_keys) AS before
    FROM source_changes c
    WHERE c.source_id = %(source_id)s
    LIMIT %(max_changes)s
), locked AS (
    SELECT c.ctid AS id
    FROM source_changes c
    WHERE c.ctid = ANY (ARRAY(SELECT id FROM candidates WHERE before < %(max_keys)s))
      AND c.source_id = %(source_id)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM source_changes c
    WHERE c.ctid = ANY (ARRAY(SELECT id FROM locked))
    RETURNING c.row_keys
), keys AS (
    SELECT DISTINCT k.row_key FROM taken, unnest(taken.row_keys) AS k(row_key)
), cur AS (
    SELECT s.row_key, pgfleet_content_hash_v1(s.body) AS hash
    FROM {view} s
    WHERE s.key = ANY (ARRAY(SELECT row_key::{key_type} FROM keys))
), fresh AS (
    SELECT cur.row_key, v.id AS version_id, cur.hash
    FROM cur CROSS JOIN model_versions v
    WHERE v.kind = 'embedding' AND v.active
      AND (%(model_name)s::text IS NULL OR v.name = %(model_name)s::text)
      AND (EXISTS (SELECT 1 FROM source_pending p
                   WHERE p.source_id = %(source_id)s AND p.row_key = cur.row_key
                     AND p.version_id = v.id)
           OR (NOT EXISTS (SELECT 1 FROM source_chunks c
                           WHERE c.source_id = %(source_id)s AND c.version_id = v.id
                             AND c.row_key = cur.row_key AND c.chunk = 0
                             AND c.content_hash = cur.hash)
               AND NOT EXISTS (SELECT 1 FROM source_failures f
                               WHERE f.source_id = %(source_id)s AND f.version_id = v.id
                                 AND f.row_key = cur.row_key AND f.content_hash = cur.hash)))
), cleared AS (
    DELETE FROM source_failures f USING fresh
    WHERE f.source_id = %(source_id)s AND f.row_key = fresh.row_key
      AND f.version_id = fresh.version_id
    RETURNING 1
), queued AS (
    INSERT INTO source_pending AS p (source_id, row_key, version_id, content_hash)
    SELECT %(source_id)s, fresh.row_key, fresh.version_id, fresh.hash FROM fresh
    ORDER BY fresh.row_key, fresh.version_id
    ON CONFLICT (source_id, row_key, version_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, priority = 0,
            queued_at = clock_timestamp(), enqueued_at = NULL,
            attempts = CASE WHEN p.content_hash = EXCLUDED.content_hash THEN p.attempts
                            ELSE 0 END,
            not_before = now(), last_error = NULL, started_at = NULL, started_by = NULL
        WHERE p.content_hash <> EXCLUDED.content_hash OR p.started_at IS NOT NULL
           OR (p.priority > 0 AND p.enqueued_at IS NULL)
    RETURNING 1
)
SELECT (SELECT count(*) FROM taken) AS changes,
       (SELECT coalesce(sum(cardinality(row_keys)), 0) FROM taken) AS logged,
       (SELECT count(*) FROM keys) AS keys,
       (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM cleared) AS cleared;

-- name: claim_source_pending
-- A producer claims source rows to publish, as claim_pending does for docs.
WITH claimable AS (
    SELECT source_id, row_key, version_id
    FROM source_pending
    WHERE enqueued_at IS NULL AND not_before <= now() AND priority <= %(max_priority)s
    ORDER BY priority, not_before, queued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE source_pending p
SET enqueued_at = now()
FROM claimable c
WHERE p.source_id = c.source_id AND p.row_key = c.row_key AND p.version_id = c.version_id
RETURNING p.source_id, p.version_id, p.row_key;

-- name: requeue_stale_sources
-- Source rows published long ago and still pending (a lost message, a killed worker): made
-- publishable again. A row a worker started that long ago and did not finish spends an
-- attempt (its process died, or its write failed as a whole): after
-- %(max_attempts)s of them it is recorded as failed instead (it may be what kills the
-- worker), and its chunks of older text are removed.
WITH stale AS (
    SELECT source_id, row_key, version_id, started_at IS NOT NULL AS died,
           attempts + (started_at IS NOT NULL)::int AS attempts
    FROM source_pending
    WHERE enqueued_at < now() - make_interval(secs => %(older_than_s)s)
      AND (NOT %(broker_busy)s
           OR enqueued_at < now() - make_interval(secs => %(older_than_s)s * 10))
      -- a row started lately is being embedded: left alone
      AND (started_at IS NULL OR started_at < now() - make_interval(secs => %(older_than_s)s))
    FOR UPDATE SKIP LOCKED
), given_up AS (
    INSERT INTO source_failures (source_id, row_key, version_id, content_hash, reason,
                                 attempts, last_error)
    SELECT s.source_id, s.row_key, s.version_id, p.content_hash, 'worker died', s.attempts,
           'the worker process embedding this row died ' || s.attempts || ' time(s)'
    FROM stale s JOIN source_pending p USING (source_id, row_key, version_id)
    WHERE s.died AND s.attempts >= %(max_attempts)s
    ON CONFLICT (source_id, row_key, version_id) DO UPDATE
        SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts,
            last_error = EXCLUDED.last_error, last_failed_at = now(),
            content_hash = EXCLUDED.content_hash
    RETURNING source_id, row_key, version_id
), dropped AS (
    DELETE FROM source_pending p USING given_up g
    WHERE p.source_id = g.source_id AND p.row_key = g.row_key AND p.version_id = g.version_id
    RETURNING 1
), cleared AS (
    DELETE FROM source_chunks c USING given_up g
    WHERE c.source_id = g.source_id AND c.row_key = g.row_key AND c.version_id = g.version_id
    RETURNING 1
), requeued AS (
    UPDATE source_pending p
    SET enqueued_at = NULL, started_at = NULL, started_by = NULL, attempts = s.attempts
    FROM stale s
    WHERE p.source_id = s.source_id AND p.row_key = s.row_key AND p.version_id = s.version_id
      AND NOT (s.died AND s.attempts >= %(max_attempts)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM requeued) AS requeued,
       (SELECT count(*) FROM given_up) AS given_up,
       (SELECT count(*) FROM dropped) + (SELECT count(*) FROM cleared) AS removed;

-- name: start_source_rows
-- A worker starts these rows: their pending rows as they are now (the hash and the time
-- queued, which the write checks again), marked as started by this process. Rows in backoff
-- or no longer pending are not returned. The text is read by the next statement, whose
-- snapshot is newer than this one's: it is never older than the pending row seen here.
UPDATE source_pending p
SET started_at = now(), started_by = %(worker)s
WHERE p.source_id = %(source_id)s AND p.version_id = %(version_id)s
  AND p.row_key = ANY (%(keys)s::text[]) AND p.not_before <= now()
RETURNING p.row_key, p.content_hash, p.queued_at, p.attempts;

-- name: source_texts
-- The rows' text to embed (cut at %(max_chars)s characters), whether it was cut, and its
-- hash; a key with no row is not returned.
SELECT s.row_key, left(s.body, %(max_chars)s) AS body,
       length(s.body) > %(max_chars)s AS cut, pgfleet_content_hash_v1(s.body) AS hash
FROM {view} s
WHERE s.key = ANY (%(keys)s::{key_type}[]);

-- name: lock_source_rows
-- The pending rows still as the worker started them (same hash, same time queued), locked:
-- a take of a change of the row (which rewrites the pending row) or a delete (its trigger
-- deletes it) waits until this write commits, and a row whose change was taken since the
-- start is left to its newer job.
SELECT p.row_key
FROM source_pending p
JOIN unnest(%(keys)s::text[], %(hashes)s::bytea[], %(queued)s::timestamptz[])
     AS u(row_key, hash, queued_at)
  ON p.row_key = u.row_key AND p.content_hash = u.hash AND p.queued_at = u.queued_at
WHERE p.source_id = %(source_id)s AND p.version_id = %(version_id)s
ORDER BY p.row_key
FOR UPDATE OF p;

-- name: delete_source_chunks
-- The locked rows' old chunks, removed in the write's transaction before replace_source_chunks
-- inserts the new ones (a row that had ten chunks and now has three has exactly three).
-- A statement of its own: an insert in the same statement would not see these deletes.
DELETE FROM source_chunks c
WHERE c.source_id = %(source_id)s AND c.version_id = %(version_id)s
  AND c.row_key = ANY (%(rows)s::text[]);

-- name: replace_source_chunks
-- The locked rows' new chunks, with the cache rows, the hit counts, the log row and the
-- pending rows' deletes (after delete_source_chunks, in the same transaction).
WITH added AS (
    INSERT INTO source_chunks (source_id, row_key, version_id, chunk, content, start_offset,
                               end_offset, heading, content_hash, embedding, tsv)
    SELECT %(source_id)s, u.row_key, %(version_id)s, u.chunk, u.content, u.start_offset,
           u.end_offset, u.heading, u.hash, u.embedding,
           to_tsvector(%(text_config)s::regconfig, u.heading || E'\n' || u.content)
    FROM unnest(%(keys)s::text[], %(chunks)s::integer[], %(contents)s::text[],
                %(starts)s::integer[], %(ends)s::integer[], %(headings)s::text[],
                %(hashes)s::bytea[], %(vectors)b::vector[])
         AS u(row_key, chunk, content, start_offset, end_offset, heading, hash, embedding)
    RETURNING 1
), done AS (
    DELETE FROM source_pending p
    WHERE p.source_id = %(source_id)s AND p.version_id = %(version_id)s
      AND p.row_key = ANY (%(rows)s::text[])
    RETURNING 1
), cleared AS (
    DELETE FROM source_failures f
    WHERE f.source_id = %(source_id)s AND f.version_id = %(version_id)s
      AND f.row_key = ANY (%(rows)s::text[])
    RETURNING 1
), cached AS (
    INSERT INTO model_cache (version_id, input_hash, embedding)
    SELECT %(version_id)s, u.hash, u.embedding
    FROM unnest(%(miss_hashes)s::bytea[], %(miss_vectors)b::vector[]) AS u(hash, embedding)
    ON CONFLICT (version_id, input_hash) DO NOTHING
    RETURNING 1
), hit AS (
    UPDATE model_cache c
    SET hits = c.hits + 1, last_hit_at = now()
    WHERE c.version_id = %(version_id)s AND c.input_hash = ANY (%(hit_hashes)s::bytea[])
    RETURNING 1
), logged AS (
    INSERT INTO inference_logs (version_id, task, latency_ms, batch_size, cache_hits,
                                model_calls, worker)
    VALUES (%(version_id)s, 'embed_source', %(latency_ms)s, %(batch_size)s, %(cache_hits)s,
            %(model_calls)s, %(worker)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) AS chunks, (SELECT count(*) FROM done) AS done;

-- name: forget_source_rows
-- Pending rows of rows that no longer exist (deleted with triggers off), with their chunks.
WITH done AS (
    DELETE FROM source_pending p
    WHERE p.source_id = %(source_id)s AND p.version_id = %(version_id)s
      AND p.row_key = ANY (%(keys)s::text[])
    RETURNING 1
)
DELETE FROM source_chunks c
WHERE c.source_id = %(source_id)s AND c.version_id = %(version_id)s
  AND c.row_key = ANY (%(keys)s::text[]);

-- name: cached_vectors
-- The cached vectors of these inputs for the version.
SELECT input_hash, embedding
FROM model_cache
WHERE version_id = %(version_id)s AND input_hash = ANY (%(hashes)s::bytea[]);

-- name: record_source_failure
-- A row failed, which spends an attempt: retried after a backoff below the limit; at it, or
-- for a permanent failure, recorded (with the hash of the text that failed, which a take
-- compares with a row's text), its pending row removed and its chunks of older text too
-- (search must not return what a row no longer says). Only while the pending row is as the
-- worker started it.
WITH target AS (
    SELECT p.source_id, p.row_key, p.version_id, p.attempts + 1 AS attempts
    FROM source_pending p
    WHERE p.source_id = %(source_id)s AND p.version_id = %(version_id)s
      AND p.row_key = %(row_key)s AND p.content_hash = %(hash)s
      AND p.queued_at = %(queued_at)s
    FOR UPDATE
), final AS (
    SELECT * FROM target WHERE %(permanent)s OR attempts >= %(max_attempts)s
), failure AS (
    INSERT INTO source_failures (source_id, row_key, version_id, content_hash, reason,
                                 attempts, last_error)
    SELECT source_id, row_key, version_id, %(tried_hash)s, %(reason)s, attempts, %(error)s
    FROM final
    ON CONFLICT (source_id, row_key, version_id) DO UPDATE
        SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts,
            last_error = EXCLUDED.last_error, last_failed_at = now(),
            content_hash = EXCLUDED.content_hash
    RETURNING 1
), dropped AS (
    DELETE FROM source_pending p USING final f
    WHERE p.source_id = f.source_id AND p.row_key = f.row_key AND p.version_id = f.version_id
    RETURNING 1
), cleared AS (
    DELETE FROM source_chunks c USING final f
    WHERE c.source_id = f.source_id AND c.row_key = f.row_key AND c.version_id = f.version_id
    RETURNING 1
), retried AS (
    UPDATE source_pending p
    SET attempts = t.attempts, last_error = %(error)s, enqueued_at = NULL,
        started_at = NULL, started_by = NULL,
        not_before = now() + make_interval(secs => %(retry_in_s)s)
    FROM target t
    WHERE p.source_id = t.source_id AND p.row_key = t.row_key AND p.version_id = t.version_id
      AND NOT (%(permanent)s OR t.attempts >= %(max_attempts)s)
    RETURNING p.attempts
)
SELECT (SELECT count(*) FROM failure) > 0 AS given_up,
       (SELECT count(*) FROM retried) > 0 AS retried,
       (SELECT max(attempts) FROM target) AS attempts;

-- name: list_source_failures
SELECT s.name AS source, f.row_key, v.name || '@' || v.version AS version, f.reason,
       f.attempts, f.last_error, f.last_failed_at
FROM source_failures f
JOIN sources s ON s.id = f.source_id
JOIN model_versions v ON v.id = f.version_id
WHERE %(source_id)s::integer IS NULL OR f.source_id = %(source_id)s::integer
ORDER BY f.last_failed_at DESC
LIMIT %(limit)s;

-- name: source_nearest
-- The chunks nearest a query vector (the caller keeps each row's best: several of a row's
-- chunks may be among them, so more than k are read). Template: {dims} is the version's
-- dimension, bound as a literal, so that the expression and the predicate are those of the
-- source's and version's HNSW index (source_index_create); the caller sets hnsw.ef_search
-- to at least the candidates asked for.
SELECT c.row_key, c.chunk, c.content, c.heading, c.start_offset, c.end_offset,
       1 - (c.embedding::vector({dims}) <=> %(query)b::vector({dims})) AS score
FROM source_chunks c
WHERE c.source_id = %(source_id)s AND c.version_id = %(version_id)s
ORDER BY c.embedding::vector({dims}) <=> %(query)b::vector({dims})
LIMIT %(candidates)s;

-- name: source_text_matches
-- The chunks that best match a full-text query (websearch syntax: words, "phrases", or,
-- -not; in the source's configuration), ranked by ts_rank_cd.
WITH q AS (
    SELECT websearch_to_tsquery(%(text_config)s::regconfig, %(query_text)s) AS query
)
SELECT c.row_key, c.chunk, c.content, c.heading, c.start_offset, c.end_offset,
       ts_rank_cd(c.tsv, q.query) AS score
FROM source_chunks c, q
WHERE c.source_id = %(source_id)s AND c.version_id = %(version_id)s AND c.tsv @@ q.query
ORDER BY score DESC, c.row_key, c.chunk
LIMIT %(candidates)s;

-- name: source_versions
-- The versions a source is embedded with: active embedding versions of its model (all of
-- them when it names none), with how many of its rows each has chunks for.
SELECT v.id, v.name, v.version, v.traffic_percent, v.active,
       (SELECT count(DISTINCT c.row_key) FROM source_chunks c
        WHERE c.source_id = %(source_id)s AND c.version_id = v.id) AS rows
FROM model_versions v
WHERE v.kind = 'embedding' AND v.active
  AND (%(model_name)s::text IS NULL OR v.name = %(model_name)s::text)
ORDER BY v.traffic_percent DESC, v.id;

-- name: source_index_versions
-- The versions a source's HNSW indexes are built for: the active embedding versions of its
-- model (every one when it names none), or the one version asked for.
SELECT v.id, v.name || '@' || v.version AS label
FROM model_versions v
WHERE v.kind = 'embedding' AND v.active AND v.dimensions IS NOT NULL
  AND (%(model_name)s::text IS NULL OR v.name = %(model_name)s::text)
  AND (%(version_id)s::integer IS NULL OR v.id = %(version_id)s::integer)
ORDER BY v.id;

-- name: sources_of_model
-- The sources a model's versions embed: those that name it and those that name none.
SELECT id, name FROM sources
WHERE model_name IS NULL OR model_name = %(model_name)s::text
ORDER BY id;

-- name: docs_source_counts
-- The built-in source's counts, as list_sources gives a source's.
SELECT (SELECT count(DISTINCT doc_id) FROM embeddings) AS rows_embedded,
       (SELECT count(*) FROM embeddings) AS chunks,
       (SELECT count(*) FROM pending_embeddings) AS pending,
       (SELECT count(*) FROM embedding_failures) AS failed;

-- name: source_status
-- Per source and active version of its model: rows with chunks, chunks, rows pending (keys
-- in the change log count for every version), rows failed and the oldest pending row's or
-- change's age (what pgfleet status and the metrics show).
SELECT s.name AS source, v.name, v.version,
       (SELECT count(DISTINCT c.row_key) FROM source_chunks c
        WHERE c.source_id = s.id AND c.version_id = v.id) AS embedded,
       (SELECT count(*) FROM source_chunks c
        WHERE c.source_id = s.id AND c.version_id = v.id) AS chunks,
       (SELECT count(*) FROM source_pending p
        WHERE p.source_id = s.id AND p.version_id = v.id)
           + (SELECT coalesce(sum(cardinality(l.row_keys)), 0) FROM source_changes l
              WHERE l.source_id = s.id) AS pending,
       (SELECT count(*) FROM source_failures f
        WHERE f.source_id = s.id AND f.version_id = v.id) AS failed,
       extract(epoch FROM now() - least(
           (SELECT min(p.queued_at) FROM source_pending p
            WHERE p.source_id = s.id AND p.version_id = v.id),
           (SELECT min(l.changed_at) FROM source_changes l WHERE l.source_id = s.id)))
           AS oldest_pending_s
FROM sources s
JOIN model_versions v ON v.kind = 'embedding' AND v.active
     AND (s.model_name IS NULL OR v.name = s.model_name)
ORDER BY s.name, v.id;

-- name: verify_source
-- What pgfleet verify checks of a source, per active version of its model: rows with no
-- chunks at all and no pending job or failure (missing); rows whose chunks
-- are of older text with no newer job pending (stale); chunks of rows that no longer exist
-- (orphaned); rows whose chunks are of two texts or not numbered 0..n-1 (duplicated).
WITH cur AS (
    SELECT s.row_key, pgfleet_content_hash_v1(s.body) AS hash FROM {view} s
), chunked AS (
    SELECT c.version_id, c.row_key, min(c.content_hash) AS hash,
           count(DISTINCT c.content_hash) AS hashes, count(*) AS n, max(c.chunk) AS top
    FROM source_chunks c
    WHERE c.source_id = %(source_id)s
    GROUP BY c.version_id, c.row_key
), pend AS (
    -- queued, or in the change log (for every version: not queued yet)
    SELECT version_id, row_key FROM source_pending WHERE source_id = %(source_id)s
    UNION
    SELECT v.id, k.row_key
    FROM source_changes l, unnest(l.row_keys) AS k(row_key), model_versions v
    WHERE l.source_id = %(source_id)s AND v.kind = 'embedding' AND v.active
), fail AS (
    SELECT version_id, row_key FROM source_failures WHERE source_id = %(source_id)s
)
SELECT v.name, v.version,
       (SELECT count(*) FROM cur) AS rows,
       (SELECT count(*) FROM cur
        WHERE NOT EXISTS (SELECT 1 FROM chunked k WHERE k.version_id = v.id
                            AND k.row_key = cur.row_key)
          AND NOT EXISTS (SELECT 1 FROM pend p WHERE p.version_id = v.id
                            AND p.row_key = cur.row_key)
          AND NOT EXISTS (SELECT 1 FROM fail f WHERE f.version_id = v.id
                            AND f.row_key = cur.row_key)) AS missing,
       (SELECT count(*) FROM chunked k JOIN cur ON cur.row_key = k.row_key
        WHERE k.version_id = v.id AND (k.hash <> cur.hash OR k.hashes > 1)
          AND NOT EXISTS (SELECT 1 FROM pend p WHERE p.version_id = v.id
                            AND p.row_key = k.row_key)) AS stale,
       (SELECT count(*) FROM chunked k
        WHERE k.version_id = v.id
          AND NOT EXISTS (SELECT 1 FROM cur WHERE cur.row_key = k.row_key)) AS orphaned,
       (SELECT count(*) FROM chunked k
        WHERE k.version_id = v.id AND (k.hashes > 1 OR k.n <> k.top + 1)) AS duplicated,
       (SELECT count(*) FROM pend p WHERE p.version_id = v.id) AS pending,
       (SELECT count(*) FROM fail f WHERE f.version_id = v.id) AS failed
FROM model_versions v
WHERE v.kind = 'embedding' AND v.active
  AND (%(model_name)s::text IS NULL OR v.name = %(model_name)s::text)
ORDER BY v.id;

-- The objects `source add` creates, composed with the names it checked against the catalog
-- (pgfleet.sources.catalog): {fleet} the fleet's schema, {table} the user's table, {key} its
-- key column, {view}, {function}, {trigger} and {index} the source's own names, {id} its
-- id and {model} its model name (literals), {text} the SQL of a row's text (over alias t).

-- name: source_notify
SELECT pg_notify('pgfleet_pending', '');

-- name: source_create_view
CREATE VIEW {fleet}.{view} AS
SELECT t.{key} AS key, (t.{key})::text AS row_key, {text} AS body FROM {table} t;

-- name: source_grant_view
-- The fleet's restricted role reads the source's columns through the view, nothing else.
GRANT SELECT ON {fleet}.{view} TO pgfleet_worker;

-- name: source_create_index
CREATE INDEX {index} ON {fleet}.source_chunks USING gin (tsv) WHERE source_id = {id};

-- name: source_create_function
-- A trigger function ({body}: its PL/pgSQL, rendered and passed as one string literal, never
-- dollar-quoted: a template's literal text could hold the closing quote). It runs with its
-- owner's rights and a fixed search_path, so whoever writes the table needs no rights on
-- the fleet's tables.
CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS {body};

-- name: source_revoke_function
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;

-- name: source_enable_always
-- Fired for rows applied by logical replication too (session_replication_role = replica).
ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger};

-- name: source_drop_trigger
DROP TRIGGER IF EXISTS {trigger} ON {table};

-- name: source_drop_view
DROP VIEW IF EXISTS {fleet}.{view};

-- name: source_drop_function
DROP FUNCTION IF EXISTS {function}();

-- name: source_drop_index
DROP INDEX IF EXISTS {fleet}.{index};

-- name: source_create_trigger_inserted
CREATE TRIGGER {trigger} AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- name: source_create_trigger_updated
CREATE TRIGGER {trigger} AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- name: source_create_trigger_deleted
CREATE TRIGGER {trigger} AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- name: source_create_trigger_truncated
CREATE TRIGGER {trigger} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- name: source_trigger_inserted
-- The inserted trigger's body.
-- The statement's keys go to the change log, in rows of at most 1,000 (the producer takes
-- them from there: take_source_changes). Nothing else is written on the user's insert: no
-- hash, no pending row per version, no index entry and no foreign key check.
BEGIN
    INSERT INTO {fleet}.source_changes (source_id, row_keys)
    SELECT {id}, array_agg(x.row_key)
    FROM (SELECT (n.{key})::text AS row_key, row_number() OVER () - 1 AS i
          FROM new_rows n) x
    GROUP BY x.i / 1000;
    IF FOUND THEN
        PERFORM pg_notify('pgfleet_pending', '');
    END IF;
    RETURN NULL;
END

-- name: source_trigger_updated
-- The updated trigger's body.
-- A row whose key changed leaves its old key's rows behind: they go now. A row goes to the
-- change log only when its text changed (an update of other columns, or a no-op, logs
-- nothing).
BEGIN
    IF EXISTS (SELECT 1 FROM old_rows o
               WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{key} = o.{key})) THEN
        PERFORM 1 FROM {fleet}.source_pending p
        WHERE p.source_id = {id} AND p.row_key IN (SELECT (o.{key})::text FROM old_rows o)
        ORDER BY p.row_key, p.version_id
        FOR UPDATE OF p;
        DELETE FROM {fleet}.source_pending p USING old_rows o
        WHERE p.source_id = {id} AND p.row_key = (o.{key})::text
          AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{key} = o.{key});
        DELETE FROM {fleet}.source_chunks c USING old_rows o
        WHERE c.source_id = {id} AND c.row_key = (o.{key})::text
          AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{key} = o.{key});
        DELETE FROM {fleet}.source_failures f USING old_rows o
        WHERE f.source_id = {id} AND f.row_key = (o.{key})::text
          AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{key} = o.{key});
    END IF;
    INSERT INTO {fleet}.source_changes (source_id, row_keys)
    SELECT {id}, array_agg(x.row_key)
    FROM (SELECT (n.{key})::text AS row_key, row_number() OVER () - 1 AS i
          FROM new_rows n LEFT JOIN old_rows o ON o.{key} = n.{key}
          WHERE o.{key} IS NULL OR {text_o} IS DISTINCT FROM {text_n}) x
    GROUP BY x.i / 1000;
    IF FOUND THEN
        PERFORM pg_notify('pgfleet_pending', '');
    END IF;
    RETURN NULL;
END

-- name: source_trigger_deleted
-- The deleted trigger's body.
-- The pending rows first: a worker writing this row's chunks holds its pending row, so
-- the delete waits for that write and then removes what it wrote. They are locked in the
-- order the producer's take and the workers lock them (row key, version), so that a large
-- delete and a take wait for each other instead of deadlocking.
BEGIN
    PERFORM 1 FROM {fleet}.source_pending p
    WHERE p.source_id = {id} AND p.row_key IN (SELECT (o.{key})::text FROM old_rows o)
    ORDER BY p.row_key, p.version_id
    FOR UPDATE OF p;
    DELETE FROM {fleet}.source_pending p USING old_rows o
    WHERE p.source_id = {id} AND p.row_key = (o.{key})::text;
    DELETE FROM {fleet}.source_chunks c USING old_rows o
    WHERE c.source_id = {id} AND c.row_key = (o.{key})::text;
    DELETE FROM {fleet}.source_failures f USING old_rows o
    WHERE f.source_id = {id} AND f.row_key = (o.{key})::text;
    RETURN NULL;
END

-- name: source_trigger_truncated
-- The truncated trigger's body.
-- Everything of the source goes.
BEGIN
    DELETE FROM {fleet}.source_changes WHERE source_id = {id};
    DELETE FROM {fleet}.source_pending WHERE source_id = {id};
    DELETE FROM {fleet}.source_chunks WHERE source_id = {id};
    DELETE FROM {fleet}.source_failures WHERE source_id = {id};
    RETURN NULL;
END
