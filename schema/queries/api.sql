-- The HTTP API: its keys and the embeddings it serves.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: api_key_create
-- A new key (only its hash); the name is taken when a key of that name exists, revoked or not.
INSERT INTO api_keys (name, key_hash, prefix) VALUES (%(name)s, %(key_hash)s, %(prefix)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, prefix, created_at;

-- name: api_key_replace
-- The fleet's own key for its command line (`pgfleet up`): created, or given a new hash.
INSERT INTO api_keys (name, key_hash, prefix) VALUES (%(name)s, %(key_hash)s, %(prefix)s)
ON CONFLICT (name) DO UPDATE
    SET key_hash = excluded.key_hash, prefix = excluded.prefix, revoked_at = NULL
RETURNING id;

-- name: api_key_list
SELECT name, prefix, created_at, last_used_at, revoked_at FROM api_keys ORDER BY id;

-- name: api_key_revoke
UPDATE api_keys SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL
RETURNING name;

-- name: api_key_exists
SELECT revoked_at FROM api_keys WHERE name = %(name)s;

-- name: api_key_check
-- The live key with this hash (no row: unknown or revoked), noting that it was used: at most
-- once a minute per key, so that a busy key does not write on every request.
WITH live AS (
    SELECT id, name, last_used_at FROM api_keys
    WHERE key_hash = %(key_hash)s AND revoked_at IS NULL
), used AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id IN (SELECT id FROM live
                 WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT id, name FROM live;

-- name: api_cache_lookup
-- The cached vectors of some texts of one version (by the SHA-256 of each), counting a hit
-- for each one found.
UPDATE model_cache SET hits = hits + 1, last_hit_at = now()
WHERE version_id = %(version_id)s AND input_hash = ANY(%(hashes)s)
RETURNING input_hash, embedding;

-- name: api_cache_insert
-- Vectors computed for an embeddings request, cached for the next time; one cached
-- meanwhile is kept.
INSERT INTO model_cache (version_id, input_hash, embedding)
SELECT %(version_id)s, h, e
FROM unnest(%(hashes)s::bytea[], %(embeddings)b::vector[]) AS t(h, e)
ON CONFLICT DO NOTHING;

-- name: api_versions
-- What GET /v1/models lists: every version that can answer (ready).
SELECT id, name, version, kind, format, dimensions, max_seq_length, status, traffic_percent,
       active, created_at
FROM model_versions
WHERE status = 'ready'
ORDER BY kind, name, id;

-- name: api_health
SELECT 1 AS ok;
