-- Model versions: the listing, lookup by reference, the active and serving versions, coverage, backfills and registration.
-- Values are bound parameters; nothing here is assembled from strings.

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

-- name: model_versions_listing
-- Every version with its measured metrics and the version it was trained from (pgfleet models).
SELECT v.id, v.name, v.version, v.kind, v.format, v.status, v.active,
       v.traffic_percent, v.dimensions, v.artifact, v.metrics,
       p.name || '@' || p.version AS parent, v.created_at
FROM model_versions v LEFT JOIN model_versions p ON p.id = v.parent_id
ORDER BY v.id;

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

-- name: serving_versions_backfilling
-- serving_versions of model %(name)s (NULL: the active version's model, as active_version
-- chooses it), each with whether it is still being backfilled (docs, or with
-- %(source_id)s the rows of that source) and its cached vector of the
-- query whose hash is %(input_hash)s (NULL: not cached): a search's routing and its cache
-- lookup in one round trip. The hit is counted by the statement that logs the search
-- (log_search_counting_cache_hit), so that a hit costs one commit, not two.
SELECT v.id, v.name, v.version, v.kind, v.format, v.artifact, v.dimensions,
       v.max_seq_length, v.status, v.traffic_percent, v.active,
       CASE WHEN %(source_id)s::integer IS NULL
            THEN EXISTS (SELECT 1 FROM pending_embeddings p
                         WHERE p.version_id = v.id AND p.priority = 1)
            ELSE EXISTS (SELECT 1 FROM source_pending p
                         WHERE p.source_id = %(source_id)s::integer AND p.version_id = v.id
                           AND p.priority = 1)
       END AS backfilling,
       (SELECT c.embedding FROM model_cache c
        WHERE c.version_id = v.id AND c.input_hash = %(input_hash)s) AS cached
FROM model_versions v
WHERE v.kind = %(kind)s AND v.active AND v.status = 'ready' AND v.traffic_percent > 0
  AND v.name = coalesce(%(name)s::text,
                        (SELECT a.name FROM model_versions a
                         WHERE a.kind = %(kind)s AND a.active AND a.status = 'ready'
                         ORDER BY a.traffic_percent DESC, a.id LIMIT 1))
ORDER BY v.id;

-- name: backfill_pending
-- How many docs a version's backfill (priority 1) has left.
SELECT count(*) AS pending FROM pending_embeddings
WHERE version_id = %(version_id)s AND priority = 1;

-- name: lock_model_name
-- Serializes registrations of one model name (until the transaction ends): the next free
-- version label is chosen and inserted under it.
SELECT pg_advisory_xact_lock(1885758068, hashtext(%(name)s));

-- name: version_labels
SELECT version FROM model_versions WHERE name = %(name)s;

-- name: register_version
-- A new version of either kind: ready, inactive, without traffic (pgfleet ab set serves it).
INSERT INTO model_versions (name, version, kind, format, artifact, dimensions,
                            max_seq_length, status, active, traffic_percent, metrics, parent_id)
VALUES (%(name)s, %(version)s, %(kind)s, %(format)s, %(artifact)s, %(dimensions)s,
        %(max_seq_length)s, 'ready', false, 0, %(metrics)s, %(parent_id)s)
RETURNING id;

-- name: produced_version
-- The version a training run registered, with the version it was trained from (pgfleet
-- train's report).
SELECT v.id AS version_id, v.name, v.version, v.format, v.artifact, v.metrics,
       p.name || '@' || p.version AS parent
FROM model_versions v
LEFT JOIN model_versions p ON p.id = v.parent_id
WHERE v.id = %s;

-- name: embedding_version_dimensions
SELECT dimensions FROM model_versions WHERE id = %(version_id)s AND kind = 'embedding';

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
