"""Noticing that the broker lost everything it held, so that lost work is published again
at once.

The producer keeps a marker key in Redis. A Redis that restarts without its data (the
embedded one keeps nothing on disk), or is flushed, comes back without the marker: every
message published before is gone, and the producer republishes all published-but-unfinished
work at once instead of waiting ``PGFLEET_REQUEUE_AFTER_S`` (ten times that while a new
backlog builds up). A Redis that restored its data from disk restored the marker too, and
its messages with it: it is left to the usual path (republishing everything would double its
backlog). Another producer that re-created the marker first is noticed by its new value.
"""

from __future__ import annotations

import logging
import time
import uuid

logger = logging.getLogger(__name__)

MARKER_KEY = "pgfleet:broker-marker"
#: the marker is read at most this often (one round trip)
CHECK_EVERY_S = 1.0


class BrokerWatch:
    def __init__(self, redis_url: str, *, check_every_s: float = CHECK_EVERY_S):
        self.redis_url = redis_url
        self.check_every_s = check_every_s
        self.marker: bytes | None = None
        self._next_check = 0.0
        self._client = None

    def lost_everything(self) -> bool:
        """True (once) when the broker lost its data since the last look."""
        import redis

        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_every_s
        try:
            client = self._connection()
            value = client.get(MARKER_KEY)
            if value is None:
                client.set(MARKER_KEY, uuid.uuid4().hex.encode(), nx=True)
                value = client.get(MARKER_KEY)
        except redis.RedisError as exc:
            logger.debug("cannot read the broker's marker: %s", exc)
            self.close()
            return False
        lost = self.marker is not None and value != self.marker
        self.marker = value
        if lost:
            logger.warning("the broker lost every message it held (restarted without its "
                           "data, or flushed): publishing all unfinished work again now")
        return lost

    def _connection(self):
        import redis

        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                                socket_timeout=2)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
