-- The inference cache.
-- Values are bound parameters; nothing here is assembled from strings.

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

-- name: cache_query_vector
-- A search's query vector from the cache (no row: this version has not seen the query). The
-- hit is counted by the statement that logs the search (log_search_counting_cache_hit), so
-- that a hit costs one commit, not two.
SELECT embedding FROM model_cache WHERE version_id = %s AND input_hash = %s;

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
