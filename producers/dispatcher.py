"""Turn pending work into Celery messages carrying doc ids.

A claim marks rows as published and commits only after their messages were sent: a producer
that dies in between leaves the rows unclaimed (rolled back), never lost. Two producers claim
disjoint rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg_pool import ConnectionPool

import schema
from pgfleet import db
from pgfleet.embedding.batching import chunked
from pgfleet.errors import BrokerUnavailable, PgfleetError
from pgfleet.sources import catalog
from workers.queues import TASK_EMBED, TASK_EMBED_SOURCE, queue_for_format

logger = logging.getLogger(__name__)

#: pending-work priorities: live changes first, then backfill
LIVE, BACKFILL = 0, 1
#: backfill is published only while fewer messages than this wait in the broker
BACKFILL_QUEUE_LIMIT = 64

PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                 "interval_max": 2.0}


@dataclass
class Published:
    claimed: int = 0
    docs: int = 0
    messages: int = 0


class Dispatcher:
    def __init__(self, pool: ConnectionPool, app: Celery, *, ids_per_message: int,
                 claim_limit: int, backlog: Callable[[], int | None] | None = None):
        self.pool = pool
        self.app = app
        self.ids_per_message = ids_per_message
        self.claim_limit = claim_limit
        self.backlog = backlog
        self._queues: dict[int, str | None] = {}

    def dispatch_once(self, max_priority: int = BACKFILL) -> Published:
        """Claim up to ``claim_limit`` pending docs and publish them (``embed_docs`` messages
        of ``(version_id, doc_ids)``); commit after sending."""
        return self._dispatch("claim_pending", TASK_EMBED, "docs", max_priority,
                              lambda row: ((row[0],), row[1]))

    def dispatch_sources_once(self, max_priority: int = BACKFILL) -> Published:
        """The same for the rows of sources (``embed_source`` messages of ``(source_id,
        version_id, row_keys)``)."""
        return self._dispatch("claim_source_pending", TASK_EMBED_SOURCE, "source rows",
                              max_priority, lambda row: ((row[0], row[1]), row[2]))

    def _dispatch(self, claim: str, task: str, what: str, max_priority: int,
                  target: Callable[[tuple[Any, ...]], tuple[tuple[int, ...], Any]]
                  ) -> Published:
        """Claim rows with the query ``claim`` and publish them as ``task`` messages, grouped
        by ``target(row)``: the message's leading arguments (the version id last) and the
        row's id, at most ``ids_per_message`` ids a message."""
        published = Published()
        with db.pooled(self.pool) as conn, conn.transaction():
            rows = conn.execute(schema.query(claim), {"limit": self.claim_limit,
                                                     "max_priority": max_priority}).fetchall()
            if not rows:
                return published
            published.claimed = len(rows)
            groups: dict[tuple[int, ...], list[Any]] = defaultdict(list)
            for row in rows:
                leading, item = target(row)
                groups[leading].append(item)
            self._refresh_queues(conn, {leading[-1] for leading in groups})
            try:
                with self.app.producer_or_acquire() as producer:
                    for leading, items in groups.items():
                        queue = self._queues.get(leading[-1])
                        if queue is None:
                            continue
                        for ids in chunked(sorted(items), self.ids_per_message):
                            # nobody waits for these results: no subscription to them
                            self.app.send_task(task, args=(*leading, ids), queue=queue,
                                               producer=producer, retry=True,
                                               retry_policy=PUBLISH_RETRY, ignore_result=True)
                            published.messages += 1
                            published.docs += len(ids)
            except KombuOperationalError as exc:
                # rolls the claim back: the rows stay publishable
                raise BrokerUnavailable(f"cannot publish to the broker: {exc}") from exc
        if published.docs:
            logger.info("published %d %s in %d messages", published.docs, what,
                        published.messages)
        return published

    def take_source_changes(self) -> int:
        """Turn the sources' change logs into pending rows (what their triggers wrote on the
        users' statements); returns how many rows were queued."""
        with db.pooled(self.pool) as conn:
            taken = catalog.take_all_changes(conn)
        if taken.changes:
            logger.debug("took %d source changes (%d keys): %d rows queued", taken.changes,
                         taken.logged, taken.queued)
        return taken.queued

    def drain(self) -> Published:
        """Publish until nothing is left to claim, docs and sources' rows alike. Backfill is
        published only while the broker holds fewer than BACKFILL_QUEUE_LIMIT messages, so
        that live changes never queue behind a large backfill."""
        total = Published()
        try:
            self.take_source_changes()
        except PgfleetError as exc:  # the docs and the rows already queued go out all the same
            logger.error("taking the sources' change logs failed: %s", exc)
        for dispatch in (self.dispatch_once, self.dispatch_sources_once):
            while True:
                step = dispatch(self._max_priority())
                total.claimed += step.claimed
                total.docs += step.docs
                total.messages += step.messages
                if step.claimed < self.claim_limit:
                    break
        return total

    def _max_priority(self) -> int:
        if self.backlog is None:
            return BACKFILL
        waiting = self.backlog()
        return BACKFILL if waiting is not None and waiting < BACKFILL_QUEUE_LIMIT else LIVE

    def _refresh_queues(self, conn, version_ids: set[int]) -> None:
        if all(v in self._queues for v in version_ids):
            return
        for row in db.fetch_all(conn, "model_versions"):
            if row["kind"] != "embedding":
                continue
            try:
                self._queues[row["id"]] = queue_for_format(row["format"])
            except ValueError as exc:
                logger.error("model version %s: %s", row["id"], exc)
                self._queues[row["id"]] = None
