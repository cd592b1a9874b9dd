"""Which pooled connections are checked with a round trip before they are handed out."""

from __future__ import annotations

import time

from psycopg_pool import ConnectionPool

from pgfleet import db


class Conn:
    """Stands for a connection: only its identity matters to the check."""


def test_only_a_connection_idle_for_longer_than_the_bound_is_checked(monkeypatch):
    checked: list[Conn] = []
    monkeypatch.setattr(ConnectionPool, "check_connection",
                        staticmethod(lambda conn: checked.append(conn)))
    check = db._check_if_idle(0.2)
    fresh, stale, unknown = Conn(), Conn(), Conn()
    db._returned(stale)
    time.sleep(0.25)
    db._returned(fresh)
    for conn in (fresh, stale, unknown):
        check(conn)
    assert checked == [stale, unknown]   # never returned: a new connection, checked too
