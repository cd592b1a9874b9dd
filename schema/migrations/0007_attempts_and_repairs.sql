-- pgfleet 0007: attempts count real deaths, and failures remember the content that failed.

-- The pool process (host:pid) that started a pending row and has not finished it. When a
-- pool process dies mid-batch, the worker's main process counts an attempt only for the rows
-- that process had started: fetching, redelivery and database errors spend nothing.
ALTER TABLE pending_embeddings ADD COLUMN started_by text;

-- The hash of the content that failed: a failure recorded for content the doc no longer has
-- (changed with triggers off) no longer blocks the reconciler. NULL: not known (kept).
ALTER TABLE embedding_failures ADD COLUMN content_hash bytea;
-- Failures recorded so far are about the docs' current content (a content change cleared them).
UPDATE embedding_failures f
SET content_hash = sha256(convert_to(d.content, 'UTF8'))
FROM docs d
WHERE d.id = f.doc_id;
