-- pgfleet 0002: a role for the fleet's processes that can read docs and write only the
-- fleet's own tables. Roles are cluster-wide, so it is created only if missing.
-- Log in as a member of it: CREATE ROLE fleet LOGIN PASSWORD '...' IN ROLE pgfleet_worker;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgfleet_worker') THEN
        CREATE ROLE pgfleet_worker NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO pgfleet_worker;
GRANT SELECT ON docs, model_versions, pgfleet_migrations TO pgfleet_worker;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON embeddings, pending_embeddings, model_cache, inference_logs, embedding_failures
    TO pgfleet_worker;

-- when a batch was started: a worker that dies mid-batch leaves it set
ALTER TABLE pending_embeddings ADD COLUMN started_at timestamptz;
