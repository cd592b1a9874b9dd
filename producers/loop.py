"""The long-running producer: listener, dispatcher and reconciler in one loop."""

from __future__ import annotations

import logging
import threading
import time

from pgfleet import db
from pgfleet.errors import PgfleetError
from pgfleet.settings import Settings, redact, resolve_urls
from producers.broker import BrokerWatch, backlog
from producers.dispatcher import Dispatcher, Published
from producers.listener import Listener
from producers.reconcile import (
    drop_retired,
    reap_stale_runs,
    reconcile_missing,
    reconcile_sources,
    repair,
    republish_lost_runs,
    requeue_stale,
    requeue_stale_sources,
)
from workers.queues import NOTIFY_CHANNEL, QUEUE_CPU, QUEUE_GPU

logger = logging.getLogger(__name__)

#: how often published-but-unfinished work is checked for lost messages
REQUEUE_CHECK_S = 5.0
#: the queues whose backlog holds backfill back and makes republishing wait longer
EMBED_QUEUES = (QUEUE_GPU, QUEUE_CPU)


class ProducerLoop:
    def __init__(self, settings: Settings):
        from workers.app import create_app

        self.settings = settings
        urls = resolve_urls(settings)
        self.app = create_app(settings)
        self.redis_url = urls.redis_url
        self.pool = db.open_pool(urls.database_url, min_size=1, max_size=2,
                                 name="pgfleet-producer")
        self.listener = Listener(urls.database_url, NOTIFY_CHANNEL)
        self.dispatcher = Dispatcher(
            self.pool, self.app, ids_per_message=settings.ids_per_message,
            claim_limit=settings.claim_limit,
            backlog=lambda: backlog(self.redis_url, EMBED_QUEUES))
        self.broker = BrokerWatch(self.redis_url)
        self._stop = threading.Event()
        logger.info("producer for %s, broker %s", redact(urls.database_url), redact(urls.redis_url))

    def stop(self) -> None:
        self._stop.set()

    def reconcile(self) -> None:
        repair(self.pool)
        reconcile_missing(self.pool)
        # the change logs first: their rows are neither missing nor to be backfilled
        self.dispatcher.take_source_changes()
        reconcile_sources(self.pool)

    def run_once(self) -> Published:
        self.reconcile()
        self._requeue()
        return self.dispatcher.drain()

    def _requeue(self) -> None:
        busy = bool(backlog(self.redis_url, EMBED_QUEUES))
        requeue_stale(self.pool, self.settings.requeue_after_s, broker_busy=busy)
        requeue_stale_sources(self.pool, self.settings.requeue_after_s,
                              self.settings.max_attempts, broker_busy=busy)
        reap_stale_runs(self.pool, self.settings.training_stale_s)
        republish_lost_runs(self.pool, self.app, self.redis_url, self.settings.training_stale_s)

    def _republish_all(self) -> None:
        """The broker lost its data: everything published and unfinished is gone."""
        requeue_stale(self.pool, 0.0)
        requeue_stale_sources(self.pool, 0.0, self.settings.max_attempts)
        republish_lost_runs(self.pool, self.app, self.redis_url, 0.0)

    def run_forever(self) -> None:
        next_requeue = next_reconcile = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if self.broker.lost_everything():
                    self._republish_all()
                if now >= next_reconcile:
                    self.reconcile()
                    drop_retired(self.pool, self.settings.retire_grace_s)
                    next_reconcile = now + self.settings.reconcile_interval_s
                if now >= next_requeue:
                    self._requeue()
                    next_requeue = now + REQUEUE_CHECK_S
                published = self.dispatcher.drain()
            except PgfleetError as exc:
                logger.error("%s; trying again in %.1f s", exc, self.settings.poll_interval_s)
                self._stop.wait(self.settings.poll_interval_s)
                continue
            # while a backfill is being fed to the broker, come back sooner than the poll
            self.listener.wait(0.2 if published.claimed else self.settings.poll_interval_s)
        self.close()

    def close(self) -> None:
        self.broker.close()
        self.listener.close()
        self.pool.close(timeout=5)
