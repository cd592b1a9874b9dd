-- What the Prometheus endpoint reads, bounded in time.
-- Values are bound parameters; nothing here is assembled from strings.

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
