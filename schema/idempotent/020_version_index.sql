-- One HNSW index per embedding version, on the version's own dimension. Searches must use
-- the same expression: ORDER BY embedding::vector(<dims>) <=> query WHERE version_id = <id>.
CREATE OR REPLACE FUNCTION pgfleet_ensure_version_index_v1(p_version_id integer) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    dims integer;
BEGIN
    SELECT dimensions INTO dims FROM model_versions
    WHERE id = p_version_id AND kind = 'embedding';
    IF dims IS NULL THEN
        RAISE EXCEPTION 'model version % is not an embedding version with dimensions', p_version_id;
    END IF;
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON embeddings USING hnsw ((embedding::vector(%s)) vector_cosine_ops) WHERE version_id = %s',
        'embeddings_hnsw_v' || p_version_id, dims, p_version_id);
END
$$;

SELECT pgfleet_ensure_version_index_v1(id)
FROM model_versions WHERE kind = 'embedding' AND active;
