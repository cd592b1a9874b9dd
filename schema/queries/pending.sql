-- The durable work queue: claiming pending work, requeueing it, the reconciler's three checks and recorded failures.
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

-- name: drop_inactive_pending
-- Pending work of versions no longer active: of docs, and of every source.
WITH sources_dropped AS (
    DELETE FROM source_pending p
    USING model_versions v
    WHERE p.version_id = v.id AND NOT v.active
    RETURNING 1
)
DELETE FROM pending_embeddings p
USING model_versions v
WHERE p.version_id = v.id AND NOT v.active;

-- name: listen_pending
-- The producer's wake-up ({channel}: a composed identifier): a NOTIFY on it says there is
-- pending work; the producer polls anyway, so a missed one costs nothing.
LISTEN {channel};
