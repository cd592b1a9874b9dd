-- The docs table, as the fleet writes and counts it.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: insert_docs
INSERT INTO docs (content, metadata)
SELECT * FROM unnest(%(contents)s::text[], %(metadata)s::jsonb[]);

-- name: docs_count
-- How many docs there are (pgfleet up --demo counts its progress from it).
SELECT count(*) FROM docs;
