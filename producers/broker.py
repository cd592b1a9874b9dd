"""What the fleet reads from its Redis broker, in one place: how many messages its queues
hold, which task ids a queue holds, and whether the broker lost everything it held.

kombu's Redis transport keeps a queue's waiting messages in one list per priority (see
``queue_keys``) and the messages delivered but not yet acknowledged, of every queue, in one
hash. Only this module reads them. Each caller passes the timeouts it can afford
(``pgfleet status`` must render at once; the producer can wait a little longer).

Noticing that the broker lost everything, so that lost work is published again at once:
the producer keeps a marker key in Redis. A Redis that restarts without its data (the
embedded one keeps nothing on disk), or is flushed, comes back without the marker: every
message published before is gone, and the producer republishes all published-but-unfinished
work at once instead of waiting ``PGFLEET_REQUEUE_AFTER_S`` (ten times that while a new
backlog builds up). A Redis that restored its data from disk restored the marker too, and
its messages with it: it is left to the usual path (republishing everything would double its
backlog). Another producer that re-created the marker first is noticed by its new value.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

MARKER_KEY = "pgfleet:broker-marker"
#: the marker is read at most this often (one round trip)
CHECK_EVERY_S = 1.0

#: kombu's Redis transport keeps a queue's prioritized messages in lists named
#: QUEUE + this separator + the priority step (3, 6, 9); priority 0 is QUEUE itself
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
#: the hash in which kombu keeps delivered, not yet acknowledged messages (of every queue)
UNACKED_KEY = "unacked"


def connect(redis_url: str, *, timeout_s: float, connect_timeout_s: float | None = None):
    """A Redis client whose calls give up after ``timeout_s`` (connecting: after
    ``connect_timeout_s``, the same by default). Close it when done."""
    import redis

    if connect_timeout_s is None:
        connect_timeout_s = timeout_s
    return redis.Redis.from_url(redis_url, socket_connect_timeout=connect_timeout_s,
                                socket_timeout=timeout_s)


def queue_keys(queue: str) -> tuple[str, ...]:
    """The lists holding ``queue``'s waiting messages: its own (priority 0), then one per
    priority step."""
    return (queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS))


def _waiting(redis_url: str, queues: Sequence[str], timeout_s: float) -> list[int]:
    """Messages waiting in each of ``queues``, in their order (one round trip); raises
    ``redis.RedisError``."""
    client = connect(redis_url, timeout_s=timeout_s)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    finally:
        client.close()
    per_queue = 1 + len(PRIORITY_STEPS)
    return [sum(lengths[i * per_queue:(i + 1) * per_queue]) for i in range(len(queues))]


def depths(redis_url: str, queues: Sequence[str], *,
           timeout_s: float = 1.0) -> list[dict[str, Any]] | None:
    """Messages waiting in each of ``queues`` (not those workers have reserved), one row
    (``name``, ``depth``) per queue; None when Redis cannot be asked."""
    import redis

    try:
        counts = _waiting(redis_url, queues, timeout_s)
    except redis.RedisError as exc:
        logger.warning("cannot read the queues' depth: %s", exc)
        return None
    return [{"name": queue, "depth": count} for queue, count in zip(queues, counts, strict=True)]


def backlog(redis_url: str, queues: Sequence[str], *, timeout_s: float = 2.0) -> int | None:
    """Messages waiting in ``queues`` together, or None when the broker cannot say."""
    import redis

    try:
        return sum(_waiting(redis_url, queues, timeout_s))
    except redis.RedisError as exc:
        logger.warning("cannot read the queue lengths: %s", exc)
        return None


def task_ids(redis_url: str, queue: str, *, timeout_s: float = 5.0,
             connect_timeout_s: float = 2.0) -> set[str] | None:
    """The Celery task ids of the messages ``queue`` holds in Redis: waiting in its lists,
    one per priority, or delivered and not yet acknowledged (of any queue: kombu keeps
    those together). None when Redis cannot say."""
    import redis

    client = connect(redis_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
    try:
        pipe = client.pipeline(transaction=False)
        for key in queue_keys(queue):
            pipe.lrange(key, 0, -1)
        pipe.hvals(UNACKED_KEY)
        *waiting, delivered = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("cannot read the %s queue: %s", queue, exc)
        return None
    finally:
        client.close()
    ids, unreadable = set(), 0
    for raw, unpack in [(m, False) for batch in waiting for m in batch] + \
            [(v, True) for v in delivered]:
        try:
            message = json.loads(raw)
            if unpack:  # kombu keeps an unacknowledged message as [message, exchange, key]
                message = message[0]
            task_id = message["headers"]["id"]
        except (ValueError, TypeError, IndexError, KeyError):
            task_id = None
        if isinstance(task_id, str) and task_id:
            ids.add(task_id)
        else:
            unreadable += 1
    if unreadable:
        # not Celery's: no task id can be read from it, so it cannot hold back a republish
        logger.warning("%d message(s) in Redis for the %s queue are not Celery messages; "
                       "they were skipped", unreadable, queue)
    return ids


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
        if self._client is None:
            self._client = connect(self.redis_url, timeout_s=2)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
