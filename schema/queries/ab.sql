-- A/B tests: the versions of a model's split, changing it (and its history), retiring a version, feedback and the report's reads.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: split_versions
-- Every version of one model, retired ones included, in id order (the split's order).
SELECT id, version, active, traffic_percent, status, kind, dimensions
FROM model_versions
WHERE name = %(name)s
ORDER BY id;

-- name: split_versions_for_change
-- split_versions, locked for the change of the split. NO KEY: a worker's write of vectors
-- checks its foreign key to the version row (FOR KEY SHARE); FOR UPDATE would block it
-- while this transaction waits for that write to build the new version's index: a deadlock.
SELECT id, version, active, traffic_percent, status, kind, dimensions
FROM model_versions
WHERE name = %(name)s
ORDER BY id
FOR NO KEY UPDATE;

-- name: clear_split
-- A split change starts from nothing: every version of the model inactive, without traffic.
UPDATE model_versions SET active = false, traffic_percent = 0
WHERE name = %(name)s;

-- name: activate_version
-- One version of the new split: active, with its traffic (0: a shadow).
UPDATE model_versions SET active = true, traffic_percent = %(traffic_percent)s
WHERE id = %(version_id)s;

-- name: record_split
-- The split in force from now on, and the command that set it (what rollback restores).
INSERT INTO ab_history (name, split, action)
VALUES (%(name)s, %(split)s, %(action)s);

-- name: notify_pending
-- Wakes the producers (they LISTEN on pgfleet_pending) for a backfill just queued.
SELECT pg_notify('pgfleet_pending', '');

-- name: last_splits
-- The two latest splits of a model: the one in force and the one before it.
SELECT split FROM ab_history
WHERE name = %(name)s
ORDER BY id DESC
LIMIT 2;

-- name: version_traffic_for_retire
-- The traffic of the version to retire, locked (NO KEY, as split_versions_for_change) until
-- it is retired.
SELECT traffic_percent FROM model_versions
WHERE name = %(name)s AND version = %(version)s
FOR NO KEY UPDATE;

-- name: retire_version
-- Stops embedding for a version; its vectors are dropped after PGFLEET_RETIRE_GRACE_S.
UPDATE model_versions SET active = false, status = 'retired', retired_at = now()
WHERE name = %(name)s AND version = %(version)s;

-- name: record_feedback
-- The user of a logged search chose one of its docs (pgfleet ab feedback).
INSERT INTO search_feedback (log_id, doc_id, relevance)
VALUES (%(log_id)s, %(doc_id)s, %(relevance)s);

-- name: report_search_logs
-- The report's searches: those these versions answered within the window.
SELECT id, version_id, latency_ms, cache_hits, error, results
FROM inference_logs
WHERE task = 'search' AND created_at >= now() - %(since)s
  AND version_id = ANY(%(version_ids)s);

-- name: report_chosen_docs
-- The docs users chose (relevance above 0) among these logged searches' results.
SELECT f.log_id, f.doc_id
FROM search_feedback f
WHERE f.log_id = ANY(%(log_ids)s) AND f.relevance > 0;

-- name: report_text2sql_logs
-- The report's text2sql answers: those these versions gave within the window.
SELECT version_id, latency_ms, error
FROM inference_logs
WHERE task = 'text2sql' AND created_at >= now() - %(since)s
  AND version_id = ANY(%(version_ids)s);

-- name: report_version_metrics
-- The metrics measured when these versions were trained (the held-out accuracy).
SELECT id, metrics FROM model_versions WHERE id = ANY(%(version_ids)s);

-- name: report_search_latencies
-- Each version's search latencies within the window, errors left out (the latency plot).
SELECT v.version, l.latency_ms
FROM inference_logs l
JOIN model_versions v ON v.id = l.version_id
WHERE l.task = 'search' AND v.name = %(name)s AND l.error IS NULL
  AND l.created_at >= now() - %(since)s
ORDER BY v.id;
