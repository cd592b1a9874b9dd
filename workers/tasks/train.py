"""Tasks of the training queue.

Their state lives in PostgreSQL (``training_runs``), not in the broker: they are
acknowledged when they start, so that Redis' visibility timeout never re-runs a long job
that is still running, and a run is claimed once (a duplicate delivery is skipped). A
worker that dies mid-run stops its heartbeat; the producer then marks the run failed. A run
has a time limit (``PGFLEET_TRAINING_TIME_LIMIT_S``), enforced by the run itself (see
:mod:`workers.training.runs`); Celery's hard ``time_limit`` is set past it as a backstop.

Each task takes ``run_id`` (a run that ``pgfleet train ...`` queued) or, when called
directly (``celery -A workers call train_embeddings --kwargs '{"epochs": 2}'``), creates
its run from the Celery task id. Progress is visible in ``pgfleet train status``, in the
result backend (state ``PROGRESS``) and in Flower (a ``task-progress`` event, whose result
shows step, total, percent, loss and phase while the run goes on).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.saferepr import saferepr

from workers import db, events, lifecycle
from workers.app import app
from workers.queues import QUEUE_TRAINING
from workers.settings import Settings, resolve_urls

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


def run_job(task_name: str, job, options: dict[str, Any], run_id: int | None,
            *, celery_task=None) -> dict[str, Any]:
    """Run a training job under its ``training_runs`` row (here, or in a worker)."""
    from workers.training import runs

    settings = lifecycle.settings()
    url = resolve_urls(settings).database_url
    with db.connect(url, autocommit=True) as conn:
        runs.reap_stale(conn, settings.training_stale_s)
        return runs.execute(
            conn, url, task=task_name, options=options, run_id=run_id,
            heartbeat_s=settings.training_heartbeat_s,
            time_limit_s=settings.training_time_limit_s or None,
            stop_grace_s=settings.training_stop_grace_s,
            job=lambda c, run, **kw: job(c, settings, run, **kw),
            celery_task_id=celery_task.request.id if celery_task is not None else None,
            on_progress=_progress_reporter(celery_task) if celery_task is not None else None)


def _quantize_job(conn, settings, run, from_version: str | int = "v1", sample: int = 200):
    from workers.errors import PgfleetError
    from workers.training.jobs import run_quantize

    if isinstance(sample, bool) or not isinstance(sample, int):
        raise PgfleetError(f"quantize: sample must be an integer, not {sample!r}")
    run.phase("export to ONNX, quantize, measure")
    return run_quantize(conn, settings, from_version, sample_size=sample, run_id=run.id)


def _train_job(conn, settings, run, **options):
    from workers.training.embeddings import train_embeddings

    return train_embeddings(conn, settings, run, **options)


def _text2sql_job(conn, settings, run, **options):
    from workers.training.text2sql import train_text2sql

    return train_text2sql(conn, settings, run, **options)


def _distill_text2sql_job(conn, settings, run, **options):
    from workers.training.text2sql_distill import distill_text2sql

    return distill_text2sql(conn, settings, run, **options)


def _distill_job(conn, settings, run, **options):
    from workers.training.embeddings import distill_embeddings

    return distill_embeddings(conn, settings, run, **options)


@app.task(bind=True, name="quantize", queue=QUEUE_TRAINING, acks_late=False,
          ignore_result=False, time_limit=_TIME_LIMIT_S)
def quantize(self, from_version: str | int = "v1", sample: int = 200,
             run_id: int | None = None) -> dict[str, Any]:
    """Export a torch embedding version to ONNX, quantize it to INT8 and register the result
    (``celery -A workers call quantize --kwargs '{"from_version": "v1"}'``)."""
    return run_job("quantize", _quantize_job, {"from_version": from_version, "sample": sample},
                   run_id, celery_task=self)


@app.task(bind=True, name="train_embeddings", queue=QUEUE_TRAINING, acks_late=False,
          ignore_result=False, time_limit=_TIME_LIMIT_S)
def train_embeddings(self, run_id: int | None = None, **options: Any) -> dict[str, Any]:
    """Fine-tune an embedding version on pairs and register the result (inactive)."""
    return run_job("train_embeddings", _train_job, options, run_id, celery_task=self)


@app.task(bind=True, name="distill_embeddings", queue=QUEUE_TRAINING, acks_late=False,
          ignore_result=False, time_limit=_TIME_LIMIT_S)
def distill_embeddings(self, run_id: int | None = None, **options: Any) -> dict[str, Any]:
    """Distill an embedding version into a smaller student and register it (inactive)."""
    return run_job("distill_embeddings", _distill_job, options, run_id, celery_task=self)


@app.task(bind=True, name="train_text2sql", queue=QUEUE_TRAINING, acks_late=False,
          ignore_result=False, time_limit=_TIME_LIMIT_S)
def train_text2sql(self, run_id: int | None = None, **options: Any) -> dict[str, Any]:
    """Train a text-to-SQL T5 on the examples and register it (inactive)
    (``celery -A workers call train_text2sql --kwargs '{"epochs": 30}'``)."""
    return run_job("train_text2sql", _text2sql_job, options, run_id, celery_task=self)


@app.task(bind=True, name="distill_text2sql", queue=QUEUE_TRAINING, acks_late=False,
          ignore_result=False, time_limit=_TIME_LIMIT_S)
def distill_text2sql(self, run_id: int | None = None, **options: Any) -> dict[str, Any]:
    """Distill a text2sql version into a smaller student (KL to the teacher's softened
    distribution plus cross-entropy) and register it (inactive)
    (``celery -A workers call distill_text2sql --kwargs '{"from_version": "v1"}'``)."""
    return run_job("distill_text2sql", _distill_text2sql_job, options, run_id,
                   celery_task=self)


#: task name -> job, for ``pgfleet train ... --local``
JOBS = {"quantize": _quantize_job, "train_embeddings": _train_job,
        "distill_embeddings": _distill_job, "train_text2sql": _text2sql_job,
        "distill_text2sql": _distill_text2sql_job}
