"""pgfleet's database schema: migrations, idempotent objects and every query, by name.

Three kinds of files live here, and nothing but SQL and the code that loads it:

* ``migrations/NNNN_*.sql`` run once each, in order, and never change once landed;
* ``idempotent/*.sql`` (functions, triggers, indexes) are re-applied on every migrate;
* ``queries/*.sql``, one file per aggregate (pending work, embeddings, versions, runs, cache,
  logs, text-to-SQL, ...), hold every query the fleet runs, each under a ``-- name: ...``
  header. A name is unique across all the files.
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


def parse_queries(text: str, *, where: str = "queries", into: dict[str, str] | None = None,
                  origin: dict[str, str] | None = None) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``; a name given twice is an error (also across
    files, when ``into`` holds the queries of the files read before and ``origin`` their
    file names)."""
    parts = _NAME_RE.split(text)
    queries: dict[str, str] = {} if into is None else into
    origin = {} if origin is None else origin
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            first = origin.get(name, where)
            raise ValueError(f"query {name!r} is defined twice: in {first} and in {where}")
        origin[name] = where
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, str]:
    """Every named query, from all the files of ``queries/``."""
    found: dict[str, str] = {}
    origin: dict[str, str] = {}
    for file in _files("queries"):
        parse_queries(file.text, where=f"schema/queries/{file.name}", into=found, origin=origin)
    return found


def query(name: str) -> str:
    """The SQL of one named query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in schema/queries/*.sql") from None
