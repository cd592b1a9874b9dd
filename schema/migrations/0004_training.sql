-- pgfleet 0004: training data and training runs.

-- (text_a, text_b) pairs: a query and a passage that answers it, or two texts with a
-- similarity score in [0, 1]. Loaded from a file, or mined from docs when none exist.
CREATE TABLE training_pairs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text_a      text NOT NULL CHECK (length(btrim(text_a)) > 0),
    text_b      text NOT NULL CHECK (length(btrim(text_b)) > 0),
    score       real CHECK (score BETWEEN 0 AND 1),
    source      text NOT NULL,           -- file:NAME, or mined:RULE
    doc_id      bigint REFERENCES docs (id) ON DELETE CASCADE,  -- a mined pair's doc
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- the same pair loaded twice is kept once
CREATE UNIQUE INDEX training_pairs_unique_idx
    ON training_pairs (md5(text_a), md5(text_b), coalesce(score, -1));

-- one row per training job, whatever starts it (pgfleet train ..., celery call ...)
CREATE TABLE training_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task             text NOT NULL,      -- train_embeddings, distill_embeddings, quantize, ...
    arguments        jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    celery_task_id   text UNIQUE,        -- a message delivered twice names the same run
    worker           text,
    claims           integer NOT NULL DEFAULT 0,  -- times a worker started it (stays 1)
    step             integer NOT NULL DEFAULT 0,
    total_steps      integer,
    phase            text,
    loss             double precision,
    losses           double precision[] NOT NULL DEFAULT '{}',
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text,
    version_id       integer REFERENCES model_versions (id) ON DELETE SET NULL,
    metrics          jsonb NOT NULL DEFAULT '{}',
    artifacts        jsonb NOT NULL DEFAULT '{}',  -- {"loss_curve": "/path/loss.png", ...}
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    heartbeat_at     timestamptz,
    finished_at      timestamptz
);
CREATE INDEX training_runs_status_idx ON training_runs (status, heartbeat_at);

-- the producer notices runs whose worker stopped heartbeating
GRANT SELECT, UPDATE ON training_runs TO pgfleet_worker;
GRANT SELECT ON training_pairs TO pgfleet_worker;
