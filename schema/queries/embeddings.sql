-- Vectors: fetching a batch, writing it, recording failures and deaths, search, and the fleet's promise checked.
-- Values are bound parameters; nothing here is assembled from strings.

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

-- name: existing_docs
-- Which of these ids name a doc at all: an id a batch did not fetch is done already, in
-- backoff, or unknown, and only an unknown one is reported as such.
SELECT id FROM docs WHERE id = ANY(%s);

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

-- name: stored_vector_dims
-- The dimensions of one stored vector of this version (none: nothing stored yet): an engine
-- whose vectors have other dimensions is refused rather than mixed with them.
SELECT vector_dims(embedding) FROM embeddings WHERE version_id = %s LIMIT 1;

-- name: pending_attempts
-- The attempts a pending row has spent so far, read before a failure is recorded to size
-- its backoff (no row: none spent).
SELECT attempts FROM pending_embeddings WHERE doc_id = %s AND version_id = %s;

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
-- The dimension is bound as a literal by the caller (schema.search_query). The k nearest
-- vectors are found first and only they are joined to their docs: on a table too small for
-- the index, a join before the sort read every doc's content (a third of the query's time).
SELECT d.id, d.content, d.metadata, 1 - n.distance AS score
FROM (SELECT e.doc_id, e.embedding::vector({dims}) <=> %(query)b::vector({dims}) AS distance
      FROM embeddings e
      WHERE e.version_id = %(version_id)s AND e.chunk = 0
      ORDER BY e.embedding::vector({dims}) <=> %(query)b::vector({dims})
      LIMIT %(k)s) n
JOIN docs d ON d.id = n.doc_id
ORDER BY n.distance;

-- name: search_ef_search
-- For the search's transaction only: HNSW returns at most ef_search candidates, so a search
-- asks for at least k.
SELECT set_config('hnsw.ef_search', %s, true);

-- name: search_ef_search_session
-- The same for the rest of an autocommit connection's session (the API's pool).
SELECT set_config('hnsw.ef_search', %s, false);

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

-- name: drop_retired_vectors
-- Vectors of versions retired longer ago than the grace period: docs' and every source's
-- chunks (with the failures recorded for them). Returns how many vectors went.
WITH retired AS (
    SELECT id FROM model_versions
    WHERE status = 'retired' AND retired_at < now() - make_interval(secs => %(grace_s)s)
), chunks AS (
    DELETE FROM source_chunks c USING retired r WHERE c.version_id = r.id RETURNING 1
), failures AS (
    DELETE FROM source_failures f USING retired r WHERE f.version_id = r.id RETURNING 1
), docs AS (
    DELETE FROM embeddings e USING retired r WHERE e.version_id = r.id RETURNING 1
)
SELECT (SELECT count(*) FROM docs) + (SELECT count(*) FROM chunks) AS dropped;
