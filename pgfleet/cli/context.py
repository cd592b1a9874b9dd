"""What every command needs: settings, the resolved URLs, a database connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg

from pgfleet import db
from pgfleet.errors import DatabaseUnavailable
from pgfleet.settings import Settings, Urls, resolve_urls


def settings() -> Settings:
    return Settings.from_env()


def urls(conf: Settings | None = None) -> Urls:
    return resolve_urls(conf or settings())


@contextlib.contextmanager
def connection(conf: Settings | None = None, *, autocommit: bool = False,
               wait_s: float = 0.0) -> Iterator[psycopg.Connection]:
    """A connection to the fleet's database; with ``wait_s``, waits for it to come up."""
    url = urls(conf).database_url
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = db.connect(url, autocommit=autocommit)
            break
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    with conn:
        yield conn
