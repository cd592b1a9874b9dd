-- Every query pgfleet runs, loaded once by name (schema.QUERIES["name"]).
-- Values are bound parameters; nothing here is assembled from strings.

-- name: claim_pending
-- A producer claims work to publish. SKIP LOCKED keeps two producers from claiming the
-- same rows; the claim commits only after the messages are published.
WITH claimable AS (
    SELECT doc_id, version_id
    FROM pending_embeddings
    WHERE enqueued_at IS NULL AND not_before <= now() AND priority <= %(max_priority)s
    ORDER BY priority, not_before, queued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pending_embeddings p
SET enqueued_at = now()
FROM claimable c
WHERE p.doc_id = c.doc_id AND p.version_id = c.version_id
RETURNING p.version_id, p.doc_id;

-- name: requeue_stale
-- Work published long ago and still pending: its message may be lost (broker restarted,
-- worker killed). Make it publishable again; a duplicate message is a cheap no-op. While
-- the broker still holds a backlog, only work far older than that is taken (its message is
-- probably just waiting in the queue).
UPDATE pending_embeddings
SET enqueued_at = NULL, started_at = NULL
WHERE enqueued_at < now() - make_interval(secs => %(older_than_s)s)
  AND (NOT %(broker_busy)s
       OR enqueued_at < now() - make_interval(secs => %(older_than_s)s * 10));

-- name: reconcile_missing
-- Docs with no vector of their current content (none at all, or one of older content), no
-- pending row and no recorded failure for an active version (loaded or changed with
-- triggers disabled, restored from a backup, a version just activated): queue them as
-- backfill, behind live changes. Run after reconcile_failures, which clears failures of
-- content a doc no longer has.
INSERT INTO pending_embeddings (doc_id, version_id, content_hash, priority)
SELECT d.id, v.id, pgfleet_content_hash_v1(d.content), 1
FROM docs d
CROSS JOIN model_versions v
WHERE v.kind = 'embedding' AND v.active
  AND (%(version_id)s::integer IS NULL OR v.id = %(version_id)s::integer)
  AND NOT EXISTS (SELECT 1 FROM embeddings e
                  WHERE e.doc_id = d.id AND e.version_id = v.id
                    AND e.content_hash = pgfleet_content_hash_v1(d.content))
  AND NOT EXISTS (SELECT 1 FROM pending_embeddings p
                  WHERE p.doc_id = d.id AND p.version_id = v.id)
  AND NOT EXISTS (SELECT 1 FROM embedding_failures f
                  WHERE f.doc_id = d.id AND f.version_id = v.id)
ON CONFLICT DO NOTHING;

-- name: reconcile_orphans
-- Rows of docs that no longer exist. A delete made with triggers off (session_replication_role
-- = replica, pg_restore --disable-triggers, a logical replication apply) skips the foreign
-- keys' cascades, leaving vectors that search would return, pending rows republished forever
-- and failures. A doc committed after this statement's snapshot is not seen, and nor are its
-- rows.
WITH vectors AS (
    DELETE FROM embeddings e
    WHERE NOT EXISTS (SELECT 1 FROM docs d WHERE d.id = e.doc_id)
    RETURNING 1
), pending AS (
    DELETE FROM pending_embeddings p
    WHERE NOT EXISTS (SELECT 1 FROM docs d WHERE d.id = p.doc_id)
    RETURNING 1
), failures AS (
    DELETE FROM embedding_failures f
    WHERE NOT EXISTS (SELECT 1 FROM docs d WHERE d.id = f.doc_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM vectors) AS vectors,
       (SELECT count(*) FROM pending) AS pending,
       (SELECT count(*) FROM failures) AS failures;

-- name: reconcile_failures
-- Failures recorded for content a doc no longer has (it changed with triggers off, which
-- leaves the failure in place) are cleared, so that reconcile_missing queues the doc again;
-- a failure of unknown content (NULL hash) is kept. Vectors of older content on docs whose
-- current content failed for good, with no job pending, are removed (left by versions before
-- record_failure removed them): search must not return what a doc no longer says.
WITH outdated AS (
    DELETE FROM embedding_failures f
    USING docs d
    WHERE d.id = f.doc_id AND f.content_hash <> pgfleet_content_hash_v1(d.content)
    RETURNING 1
), superseded AS (
    DELETE FROM embeddings e
    USING embedding_failures f, docs d
    WHERE e.doc_id = f.doc_id AND e.version_id = f.version_id AND d.id = f.doc_id
      AND f.content_hash = pgfleet_content_hash_v1(d.content)
      AND e.content_hash <> f.content_hash
      AND NOT EXISTS (SELECT 1 FROM pending_embeddings p
                      WHERE p.doc_id = e.doc_id AND p.version_id = e.version_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM outdated) AS failures,
       (SELECT count(*) FROM superseded) AS superseded;

-- name: model_versions
SELECT id, name, version, kind, format, artifact, dimensions, max_seq_length, status,
       traffic_percent, active
FROM model_versions
ORDER BY id;

-- name: model_version_by_id
SELECT id, name, version, kind, format, artifact, dimensions, max_seq_length, status,
       traffic_percent, active
FROM model_versions
WHERE id = %(version_id)s;

-- name: version_by_ref
-- A version of one kind by what a person types: its id, its label (of any model name) or
-- name@label; the oldest when a bare label names versions of several models.
SELECT id, name, version, kind, format, artifact, dimensions, max_seq_length, status,
       traffic_percent, active
FROM model_versions
WHERE kind = %(kind)s
  AND (id::text = %(ref)s OR version = %(ref)s OR name || '@' || version = %(ref)s)
ORDER BY id
LIMIT 1;

-- name: active_version
-- The active version of one kind with the most traffic; the oldest on a tie, the rule of
-- every choice among versions (ab_splits, the A/B control, the search fallback).
SELECT id, name, version, kind, format, artifact, dimensions, max_seq_length, status,
       traffic_percent, active
FROM model_versions
WHERE kind = %(kind)s AND active AND status = 'ready'
ORDER BY traffic_percent DESC, id
LIMIT 1;

-- name: serving_versions
-- The versions of one model that serve traffic, in a stable order (the A/B split's).
SELECT id, name, version, kind, format, artifact, dimensions, max_seq_length, status,
       traffic_percent, active
FROM model_versions
WHERE kind = %(kind)s AND name = %(name)s AND active AND status = 'ready'
  AND traffic_percent > 0
ORDER BY id;

-- name: fetch_batch
-- One round trip: marks the docs still pending for this version as started by this pool
-- process, and returns their current content hash, the text the model is given (from the
-- first non-blank character, cut to max_chars: pgfleet_model_text_v1), whether they are
-- blank, and a cached vector where one exists (content is returned only for misses).
-- Fetching spends no attempt. A row that was started before and not finished (its process
-- may have died of it) or that failed before comes back as a suspect: the worker runs it
-- alone, after the others, and marks it started only then (start_suspect).
-- The pending row takes the hash of the content fetched: a change made with triggers off
-- left it naming older content, and then it is a new job (no attempts, no suspect). A row
-- whose hash or start changed since this statement's snapshot (a content update, another
-- worker's fetch, a requeue) is left alone: the re-check of the latest row sees it, and its
-- new state has its own message. Any other change does not count: the producer's claim
-- (enqueued_at) commits only after its messages are sent, so a worker often fetches a row
-- while that claim is still open, waits for it, and must then take the row.
WITH started AS (
    UPDATE pending_embeddings p
    SET content_hash = h.hash,
        attempts = CASE WHEN o.content_hash = h.hash THEN p.attempts ELSE 0 END,
        started_at = now(),
        started_by = CASE WHEN o.content_hash = h.hash
                               AND (o.started_by IS NOT NULL OR o.attempts > 0)
                          THEN NULL ELSE %(worker)s END
    FROM pending_embeddings o
    JOIN docs d ON d.id = o.doc_id
    CROSS JOIN LATERAL (SELECT pgfleet_content_hash_v1(d.content) AS hash) h
    WHERE o.version_id = %(version_id)s
      AND o.doc_id = ANY(%(doc_ids)s)
      AND o.not_before <= now()
      AND p.doc_id = o.doc_id AND p.version_id = o.version_id
      AND p.content_hash = o.content_hash
      AND p.started_at IS NOT DISTINCT FROM o.started_at
    RETURNING p.doc_id, p.attempts, h.hash,
              o.content_hash = h.hash AND (o.started_by IS NOT NULL OR o.attempts > 0)
                  AS suspect
)
SELECT s.doc_id,
       s.attempts,
       s.suspect,
       s.hash,
       t.text = '' AS blank,
       CASE WHEN c.embedding IS NULL THEN t.text END AS content,
       length(t.text) = %(max_chars)s AND octet_length(d.content) > octet_length(t.text) AS cut,
       c.embedding AS cached
FROM started s
JOIN docs d ON d.id = s.doc_id
CROSS JOIN LATERAL (SELECT pgfleet_model_text_v1(d.content, %(max_chars)s) AS text) t
LEFT JOIN model_cache c ON c.version_id = %(version_id)s AND c.input_hash = s.hash
ORDER BY s.doc_id;

-- name: start_suspect
-- A suspect is about to run alone in this pool process: if it dies now, this doc is why.
UPDATE pending_embeddings
SET started_at = now(), started_by = %(worker)s
WHERE doc_id = %(doc_id)s AND version_id = %(version_id)s AND content_hash = %(hash)s
RETURNING attempts;

-- name: write_batch
-- One statement, one short transaction: vectors for docs whose content still hashes to
-- what was embedded, their pending rows, cache rows and hit counts, and the log row.
-- The docs are locked FOR SHARE first (pgfleet_lock_docs_v1): the hash compared is the
-- latest committed content's, and no content update or delete of these docs can commit
-- until this write has, so a doc updated meanwhile is left to its newer job, an older
-- vector never overwrites a newer one, and a deleted doc is skipped.
-- The pending row of every doc written is removed whatever hash it names: the vector is of
-- the doc's current (locked) content, and a pending row naming another was left by a change
-- made with triggers off.
-- Idempotent: writing the same batch twice leaves the same state.
WITH input AS (
    SELECT * FROM unnest(%(doc_ids)s::bigint[], %(hashes)s::bytea[], %(vectors)b::vector[])
        AS u(doc_id, hash, embedding)
), live AS (
    SELECT i.doc_id, i.hash, i.embedding
    FROM input i
    JOIN pgfleet_lock_docs_v1(%(doc_ids)s::bigint[]) l
      ON l.doc_id = i.doc_id AND l.content_hash = i.hash
    ORDER BY i.doc_id  -- vector rows are locked in one order by every writer
), written AS (
    INSERT INTO embeddings (doc_id, version_id, chunk, embedding, content_hash, embedded_at)
    SELECT doc_id, %(version_id)s, 0, embedding, hash, now() FROM live
    ON CONFLICT (doc_id, version_id, chunk) DO UPDATE
        SET embedding = EXCLUDED.embedding,
            content_hash = EXCLUDED.content_hash,
            embedded_at = EXCLUDED.embedded_at
    RETURNING doc_id, content_hash
), done AS (
    DELETE FROM pending_embeddings p
    USING written w
    WHERE p.doc_id = w.doc_id AND p.version_id = %(version_id)s
    RETURNING p.doc_id
), cleared AS (
    DELETE FROM embedding_failures f
    USING written w
    WHERE f.doc_id = w.doc_id AND f.version_id = %(version_id)s
    RETURNING f.doc_id
), cached AS (
    INSERT INTO model_cache (version_id, input_hash, embedding)
    SELECT %(version_id)s, u.hash, u.embedding
    FROM unnest(%(miss_hashes)s::bytea[], %(miss_vectors)b::vector[]) AS u(hash, embedding)
    ON CONFLICT (version_id, input_hash) DO NOTHING
    RETURNING 1
), hit AS (
    UPDATE model_cache c
    SET hits = c.hits + u.n, last_hit_at = now()
    FROM unnest(%(hit_hashes)s::bytea[], %(hit_counts)s::integer[]) AS u(hash, n)
    WHERE c.version_id = %(version_id)s AND c.input_hash = u.hash
    RETURNING 1
), logged AS (
    INSERT INTO inference_logs (version_id, task, latency_ms, batch_size, cache_hits,
                                model_calls, worker)
    VALUES (%(version_id)s, 'embed', %(latency_ms)s, %(batch_size)s, %(cache_hits)s,
            %(model_calls)s, %(worker)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM written) AS written,
       (SELECT count(*) FROM done) AS done,
       (SELECT count(*) FROM cleared) AS cleared,
       (SELECT count(*) FROM cached) AS cached,
       (SELECT count(*) FROM hit) AS hit,
       (SELECT count(*) FROM logged) AS logged;

-- name: record_failure
-- An item failed, which spends an attempt. Below the attempt limit it is retried after a
-- backoff (the producer picks it up again once not_before passes); at the limit, or for a
-- permanent failure, its pending row is removed, the failure stays recorded with the hash of
-- the content that failed, and the doc's vector of any other content is removed (search must
-- not keep returning what the doc no longer says). Only applies while the doc still has the
-- content that failed: its pending row names it (a content update rewrites the row, and
-- waits for this lock) and so does the doc.
WITH target AS (
    SELECT p.doc_id, p.version_id, p.attempts + 1 AS attempts
    FROM pending_embeddings p
    JOIN docs d ON d.id = p.doc_id
    WHERE p.doc_id = %(doc_id)s AND p.version_id = %(version_id)s
      AND p.content_hash = %(hash)s
      AND pgfleet_content_hash_v1(d.content) = %(hash)s
    FOR UPDATE OF p
), failure AS (
    INSERT INTO embedding_failures (doc_id, version_id, reason, attempts, last_error,
                                    content_hash)
    SELECT doc_id, version_id, %(reason)s, attempts, %(error)s, %(hash)s FROM target
    ON CONFLICT (doc_id, version_id) DO UPDATE
        SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts,
            last_error = EXCLUDED.last_error, last_failed_at = now(),
            content_hash = EXCLUDED.content_hash
    RETURNING attempts
), retried AS (
    UPDATE pending_embeddings p
    SET attempts = t.attempts, enqueued_at = NULL, started_at = NULL, started_by = NULL,
        last_error = %(error)s, not_before = now() + make_interval(secs => %(retry_in_s)s)
    FROM target t
    WHERE p.doc_id = t.doc_id AND p.version_id = t.version_id
      AND t.attempts < %(max_attempts)s AND NOT %(permanent)s
    RETURNING p.attempts
), given_up AS (
    DELETE FROM pending_embeddings p
    USING target t
    WHERE p.doc_id = t.doc_id AND p.version_id = t.version_id
      AND (t.attempts >= %(max_attempts)s OR %(permanent)s)
    RETURNING p.doc_id
), unvectored AS (
    DELETE FROM embeddings e
    USING target t
    WHERE e.doc_id = t.doc_id AND e.version_id = t.version_id
      AND e.content_hash <> %(hash)s
      AND (t.attempts >= %(max_attempts)s OR %(permanent)s)
    RETURNING 1
)
SELECT (SELECT attempts FROM failure) AS attempts,
       (SELECT count(*) FROM retried) AS retried,
       (SELECT count(*) FROM given_up) AS given_up,
       (SELECT count(*) FROM unvectored) AS unvectored;

-- name: record_deaths
-- A pool process died running a batch (the worker's main process saw it): each (version,
-- doc) of that batch that this process had started and not finished spends an attempt. At
-- the limit it is recorded as failed ("worker died") with the hash of its content, its
-- pending row and any vector of other content removed; below it, the row is a suspect when
-- it comes back (run alone, after the others). Docs the process had not started, had
-- finished, or whose content changed since (the trigger cleared started_by) spend nothing.
-- The pairs must be distinct.
WITH target AS (
    SELECT p.doc_id, p.version_id, p.content_hash, p.attempts + 1 AS attempts
    FROM pending_embeddings p
    JOIN unnest(%(version_ids)s::integer[], %(doc_ids)s::bigint[]) AS u(version_id, doc_id)
      ON p.version_id = u.version_id AND p.doc_id = u.doc_id
    WHERE p.started_by = %(worker)s
    FOR UPDATE OF p
), counted AS (
    UPDATE pending_embeddings p
    SET attempts = t.attempts, started_at = NULL, started_by = NULL, last_error = %(error)s
    FROM target t
    WHERE p.doc_id = t.doc_id AND p.version_id = t.version_id
      AND t.attempts < %(max_attempts)s
    RETURNING p.doc_id
), given_up AS (
    DELETE FROM pending_embeddings p
    USING target t
    WHERE p.doc_id = t.doc_id AND p.version_id = t.version_id
      AND t.attempts >= %(max_attempts)s
    RETURNING p.doc_id, p.version_id
), failure AS (
    INSERT INTO embedding_failures (doc_id, version_id, reason, attempts, last_error,
                                    content_hash)
    SELECT doc_id, version_id, 'worker died', attempts, %(error)s, content_hash
    FROM target WHERE attempts >= %(max_attempts)s
    ON CONFLICT (doc_id, version_id) DO UPDATE
        SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts,
            last_error = EXCLUDED.last_error, last_failed_at = now(),
            content_hash = EXCLUDED.content_hash
    RETURNING 1
), unvectored AS (
    DELETE FROM embeddings e
    USING target t
    WHERE e.doc_id = t.doc_id AND e.version_id = t.version_id
      AND e.content_hash <> t.content_hash AND t.attempts >= %(max_attempts)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM target) AS counted,
       (SELECT count(*) FROM given_up) AS given_up,
       (SELECT array_agg(doc_id ORDER BY doc_id) FROM given_up) AS given_up_ids,
       (SELECT count(*) FROM failure) AS failures,
       (SELECT count(*) FROM unvectored) AS unvectored;

-- name: search
-- Nearest docs for one version; the expression matches that version's HNSW index.
-- The dimension is bound as a literal by the caller (schema.search_query).
SELECT d.id, d.content, d.metadata, 1 - (e.embedding::vector({dims}) <=> %(query)s::vector({dims})) AS score
FROM embeddings e
JOIN docs d ON d.id = e.doc_id
WHERE e.version_id = %(version_id)s AND e.chunk = 0
ORDER BY e.embedding::vector({dims}) <=> %(query)s::vector({dims})
LIMIT %(k)s;

-- name: version_status
SELECT v.id, v.name, v.version, v.format, v.status, v.active,
       (SELECT count(*) FROM docs) AS docs,
       (SELECT count(*) FROM embeddings e WHERE e.version_id = v.id AND e.chunk = 0) AS embedded,
       (SELECT count(*) FROM pending_embeddings p WHERE p.version_id = v.id) AS pending,
       (SELECT count(*) FROM embedding_failures f WHERE f.version_id = v.id) AS failed,
       (SELECT extract(epoch FROM now() - min(p.queued_at))
          FROM pending_embeddings p WHERE p.version_id = v.id) AS oldest_pending_s
FROM model_versions v
WHERE v.kind = 'embedding'
ORDER BY v.id;

-- name: version_coverage
-- The docs, and those with a vector of one version (chunk 0: a doc's first).
SELECT (SELECT count(*) FROM docs) AS docs,
       (SELECT count(*) FROM embeddings e
        WHERE e.version_id = %(version_id)s AND e.chunk = 0) AS embedded;

-- name: backfilling
-- Whether a version still has docs queued by its backfill (priority 1).
SELECT EXISTS (SELECT 1 FROM pending_embeddings
               WHERE version_id = %(version_id)s AND priority = 1) AS backfilling;

-- name: backfill_pending
-- How many docs a version's backfill (priority 1) has left.
SELECT count(*) AS pending FROM pending_embeddings
WHERE version_id = %(version_id)s AND priority = 1;

-- name: ab_splits
-- Per model name, the versions that serve (traffic > 0) or shadow (0), and the last change
-- of its split.
SELECT v.name, v.kind, v.version, v.traffic_percent, h.action AS last_action,
       h.created_at AS changed_at
FROM model_versions v
LEFT JOIN LATERAL (SELECT a.action, a.created_at FROM ab_history a
                   WHERE a.name = v.name ORDER BY a.id DESC LIMIT 1) h ON true
WHERE v.active
ORDER BY v.name, v.traffic_percent DESC, v.id;

-- name: insert_docs
INSERT INTO docs (content, metadata)
SELECT * FROM unnest(%(contents)s::text[], %(metadata)s::jsonb[]);

-- name: verify
-- The fleet's promise, checked: per active embedding version, docs whose stored vector is
-- missing or stale (and that are neither pending nor failed for their current content),
-- failures on docs that are not blank (pgfleet_is_blank_v1, as the worker decides), vectors
-- for docs that no longer exist, and pending work.
SELECT v.id AS version_id, v.name, v.version,
       (SELECT count(*) FROM docs) AS docs,
       (SELECT count(*) FROM docs d
         WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.doc_id = d.id
                             AND e.version_id = v.id AND e.chunk = 0)
           AND NOT EXISTS (SELECT 1 FROM pending_embeddings p WHERE p.doc_id = d.id
                             AND p.version_id = v.id)
           AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.doc_id = d.id
                             AND f.version_id = v.id
                             AND (f.content_hash IS NULL
                                  OR f.content_hash = pgfleet_content_hash_v1(d.content)))
       ) AS missing,
       (SELECT count(*) FROM embeddings e JOIN docs d ON d.id = e.doc_id
         WHERE e.version_id = v.id
           AND e.content_hash <> pgfleet_content_hash_v1(d.content)
           AND NOT EXISTS (SELECT 1 FROM pending_embeddings p WHERE p.doc_id = d.id
                             AND p.version_id = v.id)) AS stale,
       (SELECT count(*) FROM embeddings e WHERE e.version_id = v.id
           AND NOT EXISTS (SELECT 1 FROM docs d WHERE d.id = e.doc_id)) AS orphaned,
       (SELECT count(*) FROM (SELECT doc_id FROM embeddings WHERE version_id = v.id
                              GROUP BY doc_id, chunk HAVING count(*) > 1) x) AS duplicated,
       (SELECT count(*) FROM pending_embeddings p WHERE p.version_id = v.id) AS pending,
       (SELECT count(*) FROM embedding_failures f WHERE f.version_id = v.id) AS failed,
       (SELECT count(*) FROM embedding_failures f JOIN docs d ON d.id = f.doc_id
         WHERE f.version_id = v.id AND NOT pgfleet_is_blank_v1(d.content)) AS failed_with_content
FROM model_versions v
WHERE v.kind = 'embedding' AND v.active
ORDER BY v.id;

-- name: list_failures
SELECT f.doc_id, v.name || '@' || v.version AS version, f.reason, f.attempts, f.last_error,
       f.first_failed_at, f.last_failed_at
FROM embedding_failures f
JOIN model_versions v ON v.id = f.version_id
ORDER BY f.last_failed_at DESC
LIMIT %(limit)s;

-- name: retry_failures
-- Clear recorded failures and queue their docs again (from their current content).
WITH cleared AS (
    DELETE FROM embedding_failures
    WHERE %(version_id)s::integer IS NULL OR version_id = %(version_id)s::integer
    RETURNING doc_id, version_id
), queued AS (
    INSERT INTO pending_embeddings (doc_id, version_id, content_hash)
    SELECT c.doc_id, c.version_id, pgfleet_content_hash_v1(d.content)
    FROM cleared c JOIN docs d ON d.id = c.doc_id
    ON CONFLICT (doc_id, version_id) DO UPDATE
        SET attempts = 0, not_before = now(), enqueued_at = NULL, started_at = NULL,
            started_by = NULL, last_error = NULL, content_hash = EXCLUDED.content_hash
    RETURNING 1
)
SELECT count(*) AS queued, pg_notify('pgfleet_pending', '') IS NULL AS notified FROM queued;

-- name: drop_retired_vectors
-- Vectors of versions retired longer ago than the grace period.
DELETE FROM embeddings e
USING model_versions v
WHERE e.version_id = v.id AND v.status = 'retired'
  AND v.retired_at < now() - make_interval(secs => %(grace_s)s);

-- name: drop_inactive_pending
-- Pending work of versions no longer active.
DELETE FROM pending_embeddings p
USING model_versions v
WHERE p.version_id = v.id AND NOT v.active;

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

-- name: log_inference
-- One request's row, every column given (pgfleet.models.inference_logs.row). results holds
-- a search's doc ids, or text2sql's chosen beam (0 = the best-scored one; NULL when no
-- candidate passed the guard, and error says why).
INSERT INTO inference_logs (version_id, assigned_version_id, task, latency_ms, batch_size,
                            cache_hits, model_calls, worker, request_key, results, error)
VALUES (%(version_id)s, %(assigned_version_id)s, %(task)s, %(latency_ms)s, %(batch_size)s,
        %(cache_hits)s, %(model_calls)s, %(worker)s, %(request_key)s, %(results)s, %(error)s)
RETURNING id;

-- name: cache_prune_unused
-- Inference cache entries unused (no hit, else not created) for max_age_s that have fewer
-- than min_hits hits: at most `limit` per statement, so that each transaction stays short;
-- rows a worker is updating right now are left for the next round.
DELETE FROM model_cache c
USING (SELECT version_id, input_hash FROM model_cache
       WHERE coalesce(last_hit_at, created_at) < now() - make_interval(secs => %(max_age_s)s)
         AND hits < %(min_hits)s
       LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED) old
WHERE c.version_id = old.version_id AND c.input_hash = old.input_hash;

-- name: cache_entries
SELECT count(*) AS entries FROM model_cache;

-- name: cache_evict
-- The least useful entries: those with fewer than min_hits hits before the others, and in
-- each group the ones unused the longest first (so a fresh entry is not evicted before an
-- old one that never earned its place).
DELETE FROM model_cache c
USING (SELECT version_id, input_hash FROM model_cache
       ORDER BY hits >= %(min_hits)s, coalesce(last_hit_at, created_at)
       LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED) victim
WHERE c.version_id = victim.version_id AND c.input_hash = victim.input_hash;

-- name: cache_stats
-- Per embedding version that is active or has entries: entries, their hits, how many the
-- next prune removes (unused for max_age_s, fewer than min_hits hits), the oldest entry,
-- and over the last window_s the lookups answered from the cache (embedding batches count
-- docs, searches count queries).
WITH logged AS (
    SELECT version_id, sum(cache_hits) AS hits, sum(batch_size) AS lookups
    FROM inference_logs
    WHERE task IN ('embed', 'search')
      AND created_at > now() - make_interval(secs => %(window_s)s)
    GROUP BY version_id
), entries AS (
    SELECT version_id, count(*) AS entries, sum(hits) AS hits,
           count(*) FILTER (WHERE coalesce(last_hit_at, created_at)
                                  < now() - make_interval(secs => %(max_age_s)s)
                              AND hits < %(min_hits)s) AS prunable,
           extract(epoch FROM now() - min(created_at)) AS oldest_s
    FROM model_cache
    GROUP BY version_id
)
SELECT v.id AS version_id, v.name, v.version,
       coalesce(e.entries, 0) AS entries, coalesce(e.hits, 0) AS hits,
       coalesce(e.prunable, 0) AS prunable, e.oldest_s,
       coalesce(l.hits, 0) AS window_hits, coalesce(l.lookups, 0) AS window_lookups
FROM model_versions v
LEFT JOIN entries e ON e.version_id = v.id
LEFT JOIN logged l ON l.version_id = v.id
WHERE v.kind = 'embedding' AND (v.active OR e.entries > 0 OR l.lookups > 0)
ORDER BY v.id;

-- name: cache_size
-- The cache table's size on disk, indexes and TOAST included.
SELECT pg_total_relation_size('model_cache') AS size_bytes;

-- name: metrics_statement_timeout
-- A scrape must never hold the database for long.
SELECT set_config('statement_timeout', %(timeout)s, false);

-- name: metrics_log_bound
-- Where a metrics scrape stops reading inference_logs: settle_s ago (see metrics_logs).
SELECT now() - make_interval(secs => %(settle_s)s) AS up_to;

-- name: metrics_logs
-- Embedding batches and searches logged in (after, up_to], aggregated per version, task,
-- batch size and latency bucket (width_bucket: the bucket's lower bound is inclusive). A
-- row counts once its transaction began at least settle_s before the scrape; one still
-- open settle_s after it began is never counted (the fleet's writes are single statements).
SELECT version_id, task, batch_size,
       width_bucket(latency_ms::float8, %(latency_bounds_ms)s::float8[]) AS latency_bucket,
       count(*) AS n, sum(latency_ms) AS latency_ms, sum(cache_hits) AS cache_hits
FROM inference_logs
WHERE task IN ('embed', 'search') AND version_id IS NOT NULL
  AND (%(after)s::timestamptz IS NULL OR created_at > %(after)s::timestamptz)
  AND created_at <= %(up_to)s::timestamptz
GROUP BY version_id, task, batch_size, latency_bucket;

-- name: metrics_failures
SELECT version_id, reason, count(*) AS docs
FROM embedding_failures
GROUP BY version_id, reason;

-- name: metrics_training_runs
SELECT task, status, count(*) AS runs
FROM training_runs
GROUP BY task, status;

-- name: queued_runs_older_than
-- Training runs submitted (they have a task id) and still waiting after this long.
SELECT id, task, arguments, celery_task_id FROM training_runs
WHERE status = 'queued' AND celery_task_id IS NOT NULL
  AND created_at < now() - make_interval(secs => %(older_than_s)s)
ORDER BY id;

-- name: training_run_heartbeat
-- A run's heartbeat, written only while the run is still running under this worker (a run
-- marked failed meanwhile is not revived); the state says whether a cancel was asked for.
WITH beat AS (
    UPDATE training_runs SET heartbeat_at = now()
    WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
    RETURNING id
)
SELECT status, cancel_requested, EXISTS (SELECT 1 FROM beat) AS beating
FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_progress
UPDATE training_runs
SET step = %(step)s, total_steps = %(total_steps)s, loss = %(loss)s, phase = %(phase)s,
    losses = %(losses)s, heartbeat_at = now()
WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
RETURNING cancel_requested;

-- name: training_run_cancel_requested
SELECT cancel_requested FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_finish
-- running -> succeeded, failed or cancelled, by the worker that claimed the run and only
-- from running: a run the producer marked failed (no heartbeat) is never flipped back.
UPDATE training_runs
SET status = %(status)s, error = %(error)s, version_id = %(version_id)s,
    metrics = metrics || %(metrics)s, artifacts = artifacts || %(artifacts)s,
    finished_at = now(), heartbeat_at = now(), step = %(step)s, loss = %(loss)s,
    losses = %(losses)s, phase = %(phase)s
WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
RETURNING id;

-- name: training_run_state
SELECT status, worker, error, version_id, metrics FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_late_outcome
-- The job of a run already ended (marked failed by the producer, say) finished after all:
-- its status stays, and what the job did is noted (once): in error, in metrics.late_outcome,
-- and the version it registered.
UPDATE training_runs
SET error = coalesce(error || E'\n', '') || %(note)s,
    version_id = coalesce(version_id, %(version_id)s),
    metrics = metrics || jsonb_build_object('late_outcome', %(late)s::jsonb),
    artifacts = artifacts || %(artifacts)s
WHERE id = %(run_id)s AND NOT metrics ? 'late_outcome'
RETURNING status;

-- name: lock_model_name
-- Serializes registrations of one model name (until the transaction ends): the next free
-- version label is chosen and inserted under it.
SELECT pg_advisory_xact_lock(1885758068, hashtext(%(name)s));

-- name: version_labels
SELECT version FROM model_versions WHERE name = %(name)s;

-- name: embedding_version_dimensions
SELECT dimensions FROM model_versions WHERE id = %(version_id)s AND kind = 'embedding';

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

-- name: register_version
-- A new version of either kind: ready, inactive, without traffic (pgfleet ab set serves it).
INSERT INTO model_versions (name, version, kind, format, artifact, dimensions,
                            max_seq_length, status, active, traffic_percent, metrics, parent_id)
VALUES (%(name)s, %(version)s, %(kind)s, %(format)s, %(artifact)s, %(dimensions)s,
        %(max_seq_length)s, 'ready', false, 0, %(metrics)s, %(parent_id)s)
RETURNING id;
