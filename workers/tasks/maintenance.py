"""Scheduled maintenance, sent by Celery beat (see :func:`workers.app.beat_schedule`).

``prune_cache`` runs on the CPU queue: a few short, chunked deletes that must not wait
behind the training queue's long jobs. It is idempotent; a message that was not taken
within one period expires.
"""

from __future__ import annotations

import logging

from pgfleet import db
from pgfleet.embedding import cache
from pgfleet.settings import resolve_urls
from workers import lifecycle
from workers.app import app
from workers.queues import QUEUE_CPU, TASK_PRUNE_CACHE

logger = logging.getLogger(__name__)


@app.task(name=TASK_PRUNE_CACHE, queue=QUEUE_CPU, acks_late=False, ignore_result=True)
def prune_cache() -> dict[str, int]:
    """Prune the inference cache by age and hits, then bound its size."""
    settings = lifecycle.settings()
    url = resolve_urls(settings).database_url
    with db.connect(url, autocommit=True, register=False, name="pgfleet-maintenance") as conn:
        report = cache.prune(conn, cache.CachePolicy.from_settings(settings))
    return report.as_dict()
