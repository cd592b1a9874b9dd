-- Text-to-SQL: the result of a guarded query, bounded in bytes on the server. The guard runs
--   SELECT q.* FROM (<checked SQL>) AS q
--   WHERE pgfleet_result_bytes_v1(octet_length(CAST(q.* AS text)), <max bytes>)
-- so each row's size as text is added to a running total, kept in a setting local to the
-- transaction (always rolled back), and the query stops with an error past the bound,
-- before the row is sent. VOLATILE keeps the call where it is (never pushed into the
-- subquery, so its ORDER BY holds) and once per row; PARALLEL UNSAFE keeps one total.
CREATE OR REPLACE FUNCTION pgfleet_result_bytes_v1(row_bytes bigint, max_bytes bigint)
    RETURNS boolean LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
    total bigint := COALESCE(NULLIF(current_setting('pgfleet.result_bytes', true), ''), '0')::bigint
                    + COALESCE(row_bytes, 0);
BEGIN
    IF total > max_bytes THEN
        RAISE EXCEPTION 'the result is larger than % bytes', max_bytes
            USING ERRCODE = 'PF001',
                  HINT = 'ask for fewer rows or columns, or allow more bytes';
    END IF;
    PERFORM set_config('pgfleet.result_bytes', total::text, true);
    RETURN true;
END
$$;

GRANT EXECUTE ON FUNCTION pgfleet_result_bytes_v1(bigint, bigint) TO pgfleet_reader;
