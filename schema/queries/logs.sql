-- Inference logs, one row per request.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: log_inference
-- One request's row, every column given (pgfleet.models.inference_logs.row). results holds
-- a search's doc ids, or text2sql's chosen beam (0 = the best-scored one; NULL when no
-- candidate passed the guard, and error says why).
INSERT INTO inference_logs (version_id, assigned_version_id, task, latency_ms, batch_size,
                            cache_hits, model_calls, worker, request_key, results, error)
VALUES (%(version_id)s, %(assigned_version_id)s, %(task)s, %(latency_ms)s, %(batch_size)s,
        %(cache_hits)s, %(model_calls)s, %(worker)s, %(request_key)s, %(results)s, %(error)s)
RETURNING id;

-- name: log_search_counting_cache_hit
-- log_inference for a search answered from the cache, counting the cache entry's hit in the
-- same statement (one commit per search); an entry evicted meanwhile counts nothing.
WITH counted AS (
    UPDATE model_cache SET hits = hits + 1, last_hit_at = now()
    WHERE version_id = %(version_id)s AND input_hash = %(input_hash)s
)
INSERT INTO inference_logs (version_id, assigned_version_id, task, latency_ms, batch_size,
                            cache_hits, model_calls, worker, request_key, results, error)
VALUES (%(version_id)s, %(assigned_version_id)s, %(task)s, %(latency_ms)s, %(batch_size)s,
        %(cache_hits)s, %(model_calls)s, %(worker)s, %(request_key)s, %(results)s, %(error)s)
RETURNING id;

-- name: log_search_caching_query_vector
-- log_inference for a search whose query the model encoded, caching its vector in the same
-- statement (one round trip and one commit instead of two); one cached meanwhile is kept.
WITH cached AS (
    INSERT INTO model_cache (version_id, input_hash, embedding)
    VALUES (%(version_id)s, %(input_hash)s, %(embedding)b)
    ON CONFLICT DO NOTHING
)
INSERT INTO inference_logs (version_id, assigned_version_id, task, latency_ms, batch_size,
                            cache_hits, model_calls, worker, request_key, results, error)
VALUES (%(version_id)s, %(assigned_version_id)s, %(task)s, %(latency_ms)s, %(batch_size)s,
        %(cache_hits)s, %(model_calls)s, %(worker)s, %(request_key)s, %(results)s, %(error)s)
RETURNING id;
