-- The docs table, as the fleet writes it.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: insert_docs
INSERT INTO docs (content, metadata)
SELECT * FROM unnest(%(contents)s::text[], %(metadata)s::jsonb[]);
