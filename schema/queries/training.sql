-- Training data: the pairs stored for fine-tuning, and the docs read to train and measure on.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: training_insert_pairs
-- Pairs, one array per column, in one statement; a pair already stored is skipped.
-- Parameters: text_a, text_b, score, source, doc_id (arrays of the same length).
INSERT INTO training_pairs (text_a, text_b, score, source, doc_id)
SELECT * FROM unnest(%s::text[], %s::text[], %s::real[], %s::text[], %s::bigint[])
ON CONFLICT DO NOTHING;

-- name: training_pairs_listing
-- The stored pairs a training run uses, in the order they were loaded. LIMIT NULL: all.
SELECT text_a, text_b, score, source, doc_id FROM training_pairs
ORDER BY id LIMIT %s;

-- name: training_docs_to_mine
-- The non-empty docs, read (through a server-side cursor) to mine pairs from. LIMIT NULL:
-- all of them.
SELECT id, content, metadata FROM docs WHERE length(btrim(content)) > 0
ORDER BY id LIMIT %s;

-- name: training_sample_docs
-- A fixed sample of the non-empty docs (hashed ids: the same sample on every run, not the
-- oldest docs) to measure a model on.
SELECT content FROM docs WHERE length(btrim(content)) > 0
ORDER BY md5(id::text) LIMIT %s;

-- name: training_distill_docs
-- The same fixed sample, the docs of held-out pairs left out: the texts a student is
-- distilled on. Parameters: the held-out doc ids, the limit.
SELECT content FROM docs WHERE length(btrim(content)) > 0
AND NOT (id = ANY(%s)) ORDER BY md5(id::text) LIMIT %s;
