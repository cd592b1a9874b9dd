"""API keys: made here, shown once, stored as their SHA-256 only.

A key is ``pgf_`` and 43 URL-safe characters (256 random bits from :mod:`secrets`), so a
plain SHA-256 of it is as good as a slow password hash: there is no dictionary to try.
Checking a request's key is one indexed lookup of that hash among the keys not revoked. A
key never reaches a log: the API's access log leaves out headers, and only a key's name and
its first characters (``prefix``) are ever printed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from pgfleet import db
from pgfleet.errors import PgfleetError

KEY_PREFIX = "pgf_"
#: what ``api-key list`` shows of a key
SHOWN_CHARS = 8
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
#: the longest key a request may present (longer ones are not looked up)
MAX_KEY_CHARS = 128


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise PgfleetError(f"a key's name is 1 to 63 letters, digits and _ . @ -, starting "
                           f"with a letter or digit, not {name!r}")
    return name


def create(conn: psycopg.Connection, name: str) -> str:
    """A new key called ``name``; the key itself, which is not stored anywhere."""
    check_name(name)
    key = new_key()
    row = db.fetch_one(conn, "api_key_create", {"name": name, "key_hash": digest(key),
                                                "prefix": key[:SHOWN_CHARS]})
    if row is None:
        raise PgfleetError(f"a key named {name!r} exists already (revoked keys keep their "
                           "names): choose another name")
    return key


def install(conn: psycopg.Connection, name: str, key: str) -> None:
    """Store a key made elsewhere under ``name``, replacing that name's key (the fleet's own
    key for its command line, kept in its credentials file)."""
    check_name(name)
    db.fetch_one(conn, "api_key_replace", {"name": name, "key_hash": digest(key),
                                           "prefix": key[:SHOWN_CHARS]})


def listing(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return db.fetch_all(conn, "api_key_list")


def revoke(conn: psycopg.Connection, name: str) -> None:
    if db.fetch_one(conn, "api_key_revoke", {"name": name}) is not None:
        return
    row = db.fetch_one(conn, "api_key_exists", {"name": name})
    if row is None:
        raise PgfleetError(f"no API key named {name!r} (pgfleet api-key list shows them)")
    raise PgfleetError(f"the API key {name!r} was revoked already, at {row['revoked_at']}")


def well_formed(key: str) -> bool:
    """Whether ``key`` could be one of ours (anything else is refused without a lookup)."""
    return len(key) <= MAX_KEY_CHARS and key.startswith(KEY_PREFIX)


def check(conn: psycopg.Connection, key: str | None) -> ApiKey | None:
    """The live key ``key`` is, else None (none given, unknown, revoked, or not a key)."""
    if not key or not well_formed(key):
        return None
    row = db.fetch_one(conn, "api_key_check", {"key_hash": digest(key)})
    return None if row is None else ApiKey(int(row["id"]), str(row["name"]))
