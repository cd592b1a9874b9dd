"""LISTEN on a dedicated connection that reconnects by itself.

NOTIFY is only a wake-up: a notification missed while disconnected costs nothing, because
the producer polls the pending table every ``poll_interval_s`` anyway.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

import schema
from pgfleet import db
from pgfleet.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)


class Listener:
    def __init__(self, url: str, channel: str, *, max_backoff_s: float = 10.0):
        self.url = url
        self.channel = channel
        self.max_backoff_s = max_backoff_s
        self._conn: psycopg.Connection | None = None
        self._backoff_s = 0.5
        self.connected_once = False

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a notification; True if one arrived."""
        conn = self._connection()
        if conn is None:
            time.sleep(min(timeout_s, self._backoff_s))
            self._backoff_s = min(self.max_backoff_s, self._backoff_s * 2)
            return False
        try:
            for _ in conn.notifies(timeout=timeout_s, stop_after=1):
                return True
            return False
        except psycopg.OperationalError as exc:
            logger.error("lost the LISTEN connection (%s); reconnecting", exc)
            self.close()
            return False

    def _connection(self) -> psycopg.Connection | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = db.connect(self.url, autocommit=True, register=False, name="pgfleet-listener")
            conn.execute(sql.SQL(schema.query("listen_pending")).format(
                channel=sql.Identifier(self.channel)))
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            logger.error("cannot LISTEN on %s: %s", self.channel, exc)
            return None
        if self.connected_once:
            logger.warning("LISTEN connection re-established on %s", self.channel)
        self.connected_once = True
        self._backoff_s = 0.5
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
