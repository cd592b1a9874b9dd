-- pgfleet 0003: A/B tests between model versions.

-- backfill work (a version activated, docs found by the reconciler) yields to live changes
ALTER TABLE pending_embeddings ADD COLUMN priority smallint NOT NULL DEFAULT 0;
DROP INDEX pending_embeddings_to_publish_idx;
CREATE INDEX pending_embeddings_to_publish_idx
    ON pending_embeddings (priority, not_before, queued_at) WHERE enqueued_at IS NULL;
CREATE INDEX pending_embeddings_version_idx ON pending_embeddings (version_id, priority);

ALTER TABLE model_versions ADD COLUMN retired_at timestamptz;
-- an inactive version serves no traffic
ALTER TABLE model_versions ADD CONSTRAINT model_versions_inactive_no_traffic
    CHECK (active OR traffic_percent = 0);

-- every change of a split, so that a rollback can restore the one before
CREATE TABLE ab_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    split       jsonb NOT NULL,          -- {"v1": 80, "v2": 20, "v3": 0 (shadow)}
    action      text NOT NULL,           -- set, promote, rollback
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_history_name_idx ON ab_history (name, id);

-- searches are logged with the version that answered and the docs it returned
ALTER TABLE inference_logs ADD COLUMN assigned_version_id integer
    REFERENCES model_versions (id) ON DELETE SET NULL;
ALTER TABLE inference_logs ADD COLUMN request_key text;
ALTER TABLE inference_logs ADD COLUMN results bigint[];
ALTER TABLE inference_logs ADD COLUMN error text;
CREATE INDEX inference_logs_task_time_idx ON inference_logs (task, created_at);

-- what a user chose (or a relevance label) for a logged search
CREATE TABLE search_feedback (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id      bigint NOT NULL REFERENCES inference_logs (id) ON DELETE CASCADE,
    doc_id      bigint NOT NULL,
    relevance   real NOT NULL DEFAULT 1 CHECK (relevance BETWEEN 0 AND 1),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX search_feedback_log_idx ON search_feedback (log_id);

GRANT SELECT, INSERT ON ab_history, search_feedback TO pgfleet_worker;
