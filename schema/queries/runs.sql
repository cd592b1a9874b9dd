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
