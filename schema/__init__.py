"""pgfleet's database schema: migrations, idempotent objects and every query, by name.

Two kinds of files live here:

* ``migrations/NNNN_*.sql`` run once each, in order, and never change once landed;
* ``idempotent/*.sql`` (functions, triggers, indexes) are re-applied on every migrate.

``queries.sql`` holds every query the fleet runs, each under a ``-- name: ...`` header.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import NamedTuple

_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class SqlFile(NamedTuple):
    name: str
    text: str


def _files(folder: str) -> list[SqlFile]:
    root = resources.files(__name__).joinpath(folder)
    files = [SqlFile(p.name, p.read_text("utf-8")) for p in root.iterdir() if p.name.endswith(".sql")]
    return sorted(files, key=lambda f: f.name)


def migrations() -> list[SqlFile]:
    """Numbered migrations, in the order they apply."""
    return _files("migrations")


def idempotent() -> list[SqlFile]:
    """Functions, triggers and indexes, re-applied on every migrate."""
    return _files("idempotent")


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``; a name given twice is an error."""
    parts = _NAME_RE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in queries.sql")
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, str]:
    return parse_queries(resources.files(__name__).joinpath("queries.sql").read_text("utf-8"))


def query(name: str) -> str:
    """The SQL of one named query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in schema/queries.sql") from None
