-- The lock a vector write takes on its docs. Re-applied on every migrate.
--
-- A write must land only while the doc still has the content that was embedded, and no newer
-- content may commit between that check and the write's commit (or an older vector could
-- overwrite a newer one). Locking the docs rows FOR SHARE gives both in READ COMMITTED: a row
-- updated since the statement's snapshot is re-read at its latest version (so the hash below
-- is the current content's), and an update of the row waits until the write commits - also
-- an update made with triggers off. Deletes wait too, so the vector never dangles.
--
-- The fleet's role may only read docs, and SELECT ... FOR SHARE needs UPDATE rights, so the
-- lock is taken by this function, which runs with its owner's rights and can do nothing but
-- lock the given rows (in id order, as the foreign-key checks do) and return their hashes.
CREATE OR REPLACE FUNCTION pgfleet_lock_docs_v1(doc_ids bigint[])
    RETURNS TABLE (doc_id bigint, content_hash bytea)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT d.id, pgfleet_content_hash_v1(d.content)
        FROM docs d
        WHERE d.id = ANY(doc_ids)
        ORDER BY d.id
        FOR SHARE
    $$;

REVOKE ALL ON FUNCTION pgfleet_lock_docs_v1(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgfleet_lock_docs_v1(bigint[]) TO pgfleet_worker;
