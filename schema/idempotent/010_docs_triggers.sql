-- Re-applied on every migrate (CREATE OR REPLACE). Objects carry a version suffix so that
-- old and new workers can coexist during a deploy.

CREATE OR REPLACE FUNCTION pgfleet_content_hash_v1(content text) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN sha256(convert_to(content, 'UTF8'));

CREATE OR REPLACE FUNCTION pgfleet_docs_touch_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Inserts: one pending row per (doc, active embedding version), then one wake-up. A pending
-- row that is queued again is a new job: its attempts and who started it are forgotten.
CREATE OR REPLACE FUNCTION pgfleet_docs_inserted_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_embeddings (doc_id, version_id, content_hash)
    SELECT n.id, v.id, pgfleet_content_hash_v1(n.content)
    FROM new_rows n
    CROSS JOIN model_versions v
    WHERE v.kind = 'embedding' AND v.active
    ON CONFLICT (doc_id, version_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash,
            queued_at = now(), enqueued_at = NULL, priority = 0,
            attempts = 0, not_before = now(), last_error = NULL,
            started_at = NULL, started_by = NULL;
    IF FOUND THEN
        PERFORM pg_notify('pgfleet_pending', '');
    END IF;
    RETURN NULL;
END
$$;

-- Updates: only rows whose content really changed are queued; metadata-only updates and
-- no-op updates are not. Vectors live in their own table, so the workers' write-back never
-- touches docs and never fires this.
CREATE OR REPLACE FUNCTION pgfleet_docs_updated_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_embeddings (doc_id, version_id, content_hash)
    SELECT n.id, v.id, pgfleet_content_hash_v1(n.content)
    FROM new_rows n
    JOIN old_rows o ON o.id = n.id
    CROSS JOIN model_versions v
    WHERE v.kind = 'embedding' AND v.active
      AND o.content IS DISTINCT FROM n.content
    ON CONFLICT (doc_id, version_id) DO UPDATE
        SET content_hash = EXCLUDED.content_hash,
            queued_at = now(), enqueued_at = NULL, priority = 0,
            attempts = 0, not_before = now(), last_error = NULL,
            started_at = NULL, started_by = NULL;
    IF FOUND THEN
        -- a recorded failure was about the old content
        DELETE FROM embedding_failures f
        USING new_rows n JOIN old_rows o ON o.id = n.id
        WHERE f.doc_id = n.id AND o.content IS DISTINCT FROM n.content;
        PERFORM pg_notify('pgfleet_pending', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER docs_touch_v1
    BEFORE UPDATE ON docs
    FOR EACH ROW EXECUTE FUNCTION pgfleet_docs_touch_v1();

CREATE OR REPLACE TRIGGER docs_inserted_v1
    AFTER INSERT ON docs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgfleet_docs_inserted_v1();

CREATE OR REPLACE TRIGGER docs_updated_v1
    AFTER UPDATE ON docs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgfleet_docs_updated_v1();
