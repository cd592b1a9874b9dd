"""Tasks of the training queue.

Their state lives in PostgreSQL (``training_runs``), not in the broker: they are
acknowledged when they start, so that Redis' visibility timeout never re-runs a long job
that is still running, and a run is claimed once (a duplicate delivery is skipped). A
worker that dies mid-run stops its heartbeat; the producer then marks the run failed. A run
has a time limit (``PGFLEET_TRAINING_TIME_LIMIT_S``), enforced by the run itself (see
:mod:`pgfleet.training.runs`); Celery's hard ``time_limit`` is set past it as a backstop.

There is one task per job of :mod:`pgfleet.training.specs`, named as the job. Each takes
the job's options, and ``run_id`` (a run that ``pgfleet train ...`` queued) or, when called
directly (``celery -A workers call train_embeddings --kwargs '{"epochs": 2}'``), none: it
creates its run from the Celery task id. Progress is visible in ``pgfleet train status``, in the
result backend (state ``PROGRESS``) and in Flower (a ``task-progress`` event, whose result
shows step, total, percent, loss and phase while the run goes on).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.saferepr import saferepr

from pgfleet import db
from pgfleet.settings import Settings, resolve_urls
from pgfleet.training.specs import SPECS, JobSpec
from workers import events, lifecycle
from workers.app import app
from workers.queues import QUEUE_TRAINING

logger = logging.getLogger(__name__)


def celery_time_limit_s(settings: Settings) -> float | None:
    """Celery's hard time limit for training tasks: a backstop well past the run's own
    limit and grace (which fail the run and end a stuck process first), for the case where
    even the heartbeat thread cannot run."""
    if not settings.training_time_limit_s:
        return None
    return (settings.training_time_limit_s + settings.training_stop_grace_s
            + 2 * settings.training_heartbeat_s + 60.0)


_TIME_LIMIT_S = celery_time_limit_s(Settings.from_env())


def _progress_reporter(task):
    def report(state: dict[str, Any]) -> None:
        task.update_state(state="PROGRESS", meta=state)
        if task.request.id and not task.request.is_eager:
            # Flower shows a task's known fields only: the progress goes in its result too
            task.send_event("task-progress", **state,
                            result=saferepr(events.progress_result(state)))
    return report


def run_job(spec: JobSpec, options: dict[str, Any], run_id: int | None,
            *, celery_task=None) -> dict[str, Any]:
    """Run a training job under its ``training_runs`` row (here, or in a worker). Its
    options are checked inside the run, so that a bad one fails the run with its reason."""
    from pgfleet.training import runs

    settings = lifecycle.settings()
    url = resolve_urls(settings).database_url
    with db.connect(url, autocommit=True) as conn:
        runs.reap_stale(conn, settings.training_stale_s)
        return runs.execute(
            conn, url, task=spec.name, options=options, run_id=run_id,
            heartbeat_s=settings.training_heartbeat_s,
            time_limit_s=settings.training_time_limit_s or None,
            stop_grace_s=settings.training_stop_grace_s,
            job=lambda c, run, **given: spec.execute(c, settings, run, given),
            celery_task_id=celery_task.request.id if celery_task is not None else None,
            on_progress=_progress_reporter(celery_task) if celery_task is not None else None)


def _task(spec: JobSpec):
    """The Celery task of a job: ``run_id`` (a queued run) or none (one is created), and the
    job's options as keyword arguments."""
    def task(self, run_id: int | None = None, **options: Any) -> dict[str, Any]:
        return run_job(spec, options, run_id, celery_task=self)

    task.__name__ = task.__qualname__ = spec.name
    task.__doc__ = spec.summary
    return app.task(bind=True, name=spec.name, queue=QUEUE_TRAINING, acks_late=False,
                    ignore_result=False, time_limit=_TIME_LIMIT_S)(task)


#: task name -> Celery task, one for each job of :data:`~pgfleet.training.specs.SPECS`
TASKS = {name: _task(spec) for name, spec in SPECS.items()}
