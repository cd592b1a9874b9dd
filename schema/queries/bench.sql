-- The embedding benchmark (`pgfleet bench`): the docs it inserts, what it polls for while the
-- fleet embeds them, and the per-doc cost the workers logged. It runs on its own embedded
-- database, in a temporary directory.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: bench_insert_backlog
-- A backlog: every text as a doc, in one statement (the caller's transaction); %s: the
-- metadata (jsonb), then the texts. Returns the new docs' ids, to wait for their vectors.
INSERT INTO docs (content, metadata) SELECT t, %s FROM unnest(%s::text[]) t
RETURNING id;

-- name: bench_count_embedded
-- How many of these docs (%s: their ids) have a vector yet.
SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s);

-- name: bench_insert_doc
-- One doc at idle, timed from its commit until its vector is visible.
INSERT INTO docs (content) VALUES (%s) RETURNING id;

-- name: bench_is_embedded
-- Polled every few milliseconds at idle: a row once the doc (%s) has a vector.
SELECT 1 FROM embeddings WHERE doc_id = %s;

-- name: bench_reset
-- Between phases: no docs (their vectors and pending rows go with them), no cache and no
-- logs, so that each phase measures only its own work.
TRUNCATE docs, model_cache, inference_logs RESTART IDENTITY CASCADE;

-- name: bench_model_cost_per_doc
-- Milliseconds per doc inside the worker (fetch to write) for batches that ran the model.
SELECT sum(latency_ms) / nullif(sum(batch_size), 0) FROM inference_logs
WHERE task = 'embed' AND cache_hits = 0;

-- name: bench_cache_hit_cost_per_doc
-- The same for batches answered from the inference cache alone.
SELECT sum(latency_ms) / nullif(sum(batch_size), 0) FROM inference_logs
WHERE task = 'embed' AND model_calls = 0;

-- name: bench_insert_chunk
-- The scale run's backlog, a chunk (%s: its texts) per statement and transaction.
INSERT INTO docs (content) SELECT unnest(%s::text[]);

-- name: bench_count_all_embedded
-- The scale run's progress: vectors written so far.
SELECT count(*) FROM embeddings;
