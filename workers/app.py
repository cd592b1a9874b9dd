"""The Celery application. Import-cheap: importing it loads no model and no torch."""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue

from pgfleet.errors import ConfigurationError
from pgfleet.settings import Settings, resolve_urls
from workers import queues

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def create_app(settings: Settings | None = None) -> Celery:
    if settings is None:
        try:
            settings = Settings.from_env()
        except ConfigurationError as exc:
            # importing the app must not fail; whatever uses the bad setting says so clearly
            logger.debug("%s; the app uses default settings", exc)
            settings = Settings()
    app = Celery("pgfleet", include=["workers.tasks.embed", "workers.tasks.embed_source",
                                      "workers.tasks.train",
                                      "workers.tasks.text2sql", "workers.tasks.maintenance"])
    broker = _broker_url(settings)
    app.conf.update(
        broker_url=broker,
        # per-message results (a summary or a clear error) for `celery -A workers result`
        result_backend=broker,
        result_expires=86400,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # messages carry ids; the durable record is PostgreSQL; embed results are stored
        # explicitly per message
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        task_queues=[Queue(name) for name in queues.ALL_QUEUES],
        task_default_queue=queues.QUEUE_GPU,
        task_routes={**{name: {"queue": queues.QUEUE_TRAINING} for name in queues.TRAINING_TASKS},
                     queues.TASK_GENERATE_SQL: {"queue": queues.QUEUE_CPU},
                     queues.TASK_PRUNE_CACHE: {"queue": queues.QUEUE_CPU}},
        beat_schedule=beat_schedule(settings),
        # never in the working directory: `pgfleet beat` also passes it explicitly
        beat_schedule_filename=str(settings.home / queues.BEAT_SCHEDULE_FILE),
        broker_transport_options={
            # a message reserved by a worker that died comes back after this long: the
            # same bound as the producer's republishing of unfinished work, so that the
            # time to recover is one setting (PGFLEET_REQUEUE_AFTER_S), not Redis' default
            "visibility_timeout": max(10, int(settings.requeue_after_s)),
        },
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict]:
    """What Celery beat sends, and how often. A message not taken within one period
    expires, so that a fleet without a CPU worker does not pile them up."""
    every_s = settings.cache_prune_interval_s
    return {
        "prune-inference-cache": {
            "task": queues.TASK_PRUNE_CACHE,
            "schedule": every_s,
            "options": {"queue": queues.QUEUE_CPU, "expires": every_s},
        },
    }


def _broker_url(settings: Settings) -> str:
    try:
        return resolve_urls(settings).redis_url
    except ConfigurationError as exc:
        # importing the app must work without a fleet (tools, tests); the first connection
        # attempt then fails against Redis' default address, and the log says why
        logger.debug("%s; using %s", exc, DEFAULT_REDIS_URL)
        return DEFAULT_REDIS_URL


app = create_app()
