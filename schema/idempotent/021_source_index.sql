-- One HNSW index per source and embedding version (see source_index_create in
-- queries/indexes.sql, which `pgfleet source add` and `pgfleet ab set` build concurrently):
-- here, for the sources of a database made before they had one, and for any that a build
-- left missing. Searches use the same expression and predicate.
CREATE OR REPLACE FUNCTION pgfleet_ensure_source_index_v1(p_source_id integer,
                                                          p_version_id integer)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    dims integer;
BEGIN
    SELECT dimensions INTO dims FROM model_versions
    WHERE id = p_version_id AND kind = 'embedding';
    IF dims IS NULL THEN
        RAISE EXCEPTION 'model version % is not an embedding version with dimensions', p_version_id;
    END IF;
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON source_chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) WHERE source_id = %s AND version_id = %s',
        'source_chunks_hnsw_s' || p_source_id || '_v' || p_version_id, dims, p_source_id,
        p_version_id);
END
$$;

SELECT pgfleet_ensure_source_index_v1(s.id, v.id)
FROM sources s
JOIN model_versions v ON v.kind = 'embedding' AND v.active AND v.dimensions IS NOT NULL
                     AND (s.model_name IS NULL OR v.name = s.model_name);
