-- Training runs: heartbeats, progress, cancellation and outcomes.
-- Values are bound parameters; nothing here is assembled from strings.

-- name: queued_runs_older_than
-- Training runs submitted (they have a task id) and still waiting after this long.
SELECT id, task, arguments, celery_task_id FROM training_runs
WHERE status = 'queued' AND celery_task_id IS NOT NULL
  AND created_at < now() - make_interval(secs => %(older_than_s)s)
ORDER BY id;

-- name: training_run_heartbeat
-- A run's heartbeat, written only while the run is still running under this worker (a run
-- marked failed meanwhile is not revived); the state says whether a cancel was asked for.
WITH beat AS (
    UPDATE training_runs SET heartbeat_at = now()
    WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
    RETURNING id
)
SELECT status, cancel_requested, EXISTS (SELECT 1 FROM beat) AS beating
FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_progress
UPDATE training_runs
SET step = %(step)s, total_steps = %(total_steps)s, loss = %(loss)s, phase = %(phase)s,
    losses = %(losses)s, heartbeat_at = now()
WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
RETURNING cancel_requested;

-- name: training_run_cancel_requested
SELECT cancel_requested FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_finish
-- running -> succeeded, failed or cancelled, by the worker that claimed the run and only
-- from running: a run the producer marked failed (no heartbeat) is never flipped back.
UPDATE training_runs
SET status = %(status)s, error = %(error)s, version_id = %(version_id)s,
    metrics = metrics || %(metrics)s, artifacts = artifacts || %(artifacts)s,
    finished_at = now(), heartbeat_at = now(), step = %(step)s, loss = %(loss)s,
    losses = %(losses)s, phase = %(phase)s
WHERE id = %(run_id)s AND status = 'running' AND worker = %(worker)s
RETURNING id;

-- name: training_run_state
SELECT status, worker, error, version_id, metrics FROM training_runs WHERE id = %(run_id)s;

-- name: training_run_late_outcome
-- The job of a run already ended (marked failed by the producer, say) finished after all:
-- its status stays, and what the job did is noted (once): in error, in metrics.late_outcome,
-- and the version it registered.
UPDATE training_runs
SET error = coalesce(error || E'\n', '') || %(note)s,
    version_id = coalesce(version_id, %(version_id)s),
    metrics = metrics || jsonb_build_object('late_outcome', %(late)s::jsonb),
    artifacts = artifacts || %(artifacts)s
WHERE id = %(run_id)s AND NOT metrics ? 'late_outcome'
RETURNING status;

-- name: training_run_create
-- A queued run; a second submission of the same Celery task id inserts nothing (the caller
-- then reads the run that task id already names). Parameters: task, arguments, task id.
INSERT INTO training_runs (task, arguments, celery_task_id) VALUES (%s, %s, %s)
ON CONFLICT (celery_task_id) DO NOTHING RETURNING id;

-- name: training_run_by_task_id
-- The run a Celery task id already names.
SELECT id FROM training_runs WHERE celery_task_id = %s;

-- name: training_run_set_task_id
-- The Celery task id of a run, once its message is sent. Parameters: task id, run id.
UPDATE training_runs SET celery_task_id = %s WHERE id = %s;

-- name: training_run_keep_task_id
-- The Celery task id of a run started from a message, unless the run already has one.
-- Parameters: task id, run id.
UPDATE training_runs SET celery_task_id = coalesce(celery_task_id, %s)
WHERE id = %s;

-- name: training_run_by_id
SELECT * FROM training_runs WHERE id = %s;

-- name: training_runs_listing
-- The latest runs, newest first, with the version each produced as name@version.
SELECT r.*, v.name || '@' || v.version AS produced FROM training_runs r
LEFT JOIN model_versions v ON v.id = r.version_id
ORDER BY r.id DESC LIMIT %s;

-- name: training_run_claim
-- queued -> running in one conditional statement: a message delivered twice, or two workers
-- racing, find the run running and train nothing. Parameters: worker, run id, task.
UPDATE training_runs SET status = 'running', claims = claims + 1, worker = %s,
    started_at = now(), heartbeat_at = now()
WHERE id = %s AND status = 'queued' AND task = %s RETURNING *;

-- name: training_run_claim_state
-- Why a run could not be claimed: its task, its status and who claimed it.
SELECT task, status, worker FROM training_runs WHERE id = %s;

-- name: training_run_cancel
-- A queued run is cancelled at once; a running one is asked to stop (its heartbeat reads
-- cancel_requested). Returns the status afterwards.
UPDATE training_runs SET status = CASE WHEN status = 'queued' THEN 'cancelled'
    ELSE status END, cancel_requested = true,
    finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END
WHERE id = %s RETURNING status;

-- name: training_runs_reap_stale
-- Running runs whose heartbeat is older than the limit (their worker died or lost the
-- database) are marked failed, saying so. Parameters: the limit in whole seconds (for the
-- message), the limit in seconds. %% is a literal percent sign: format()'s own %s.
UPDATE training_runs SET status = 'failed', finished_at = now(),
    error = format('no heartbeat from %%s since %%s (more than %%s s): its worker died or lost the database; start the job again',
                   worker, heartbeat_at, %s::int)
WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)
RETURNING id;
