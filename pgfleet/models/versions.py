"""Model versions, of either kind (embedding, text2sql): looking one up by what a person
types (an id, ``v1`` or ``name@v1``, else the active one), and registering a new one under
a free label.

One rule chooses among versions everywhere: the most traffic, and on a tie the oldest (the
lowest id). The active version, the A/B control and the search fallback all follow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

import schema
from pgfleet import db
from pgfleet.errors import UnknownModelVersion
from pgfleet.models.spec import ModelFormat, ModelSpec

logger = logging.getLogger(__name__)

Kind = Literal["embedding", "text2sql"]

#: what to do when no version of a kind is active
_NO_ACTIVE = {
    "embedding": "no active embedding version; activate one first",
    "text2sql": "no active text2sql version: train one (pgfleet train text2sql), activate it "
                "(pgfleet ab set text2sql v1=100), or name one with --version",
}


@dataclass(frozen=True)
class Version:
    """A row of ``model_versions``."""

    id: int
    name: str
    version: str
    kind: Kind
    format: ModelFormat
    artifact: str
    dimensions: int | None
    max_seq_length: int | None
    status: str
    traffic_percent: int
    active: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Version:
        return cls(int(row["id"]), row["name"], row["version"], row["kind"], row["format"],
                   row["artifact"], row["dimensions"], row["max_seq_length"], row["status"],
                   int(row["traffic_percent"]), bool(row["active"]))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def spec(self) -> ModelSpec:
        """What an embedding engine needs to load this version (an embedding version always
        has dimensions: the table's check says so)."""
        if self.dimensions is None:
            raise UnknownModelVersion(f"{self.label} is a {self.kind} version, not an "
                                      "embedding version")
        return ModelSpec(self.id, self.name, self.version, self.format, self.artifact,
                         self.dimensions, self.max_seq_length)


def find(conn: psycopg.Connection, kind: Kind, ref: str | int | None = None) -> Version:
    """The version of ``kind`` that ``ref`` names (an id, ``v2`` or ``name@v2``; the oldest
    when a bare label names versions of several models), else (``None``) the active one."""
    if ref is None:
        row = db.fetch_one(conn, "active_version", {"kind": kind})
        if row is None:
            raise UnknownModelVersion(_NO_ACTIVE[kind])
    else:
        row = db.fetch_one(conn, "version_by_ref", {"kind": kind, "ref": str(ref)})
        if row is None:
            raise UnknownModelVersion(_unknown(conn, kind, ref))
    return Version.from_row(row)


def embedding_version(conn: psycopg.Connection, ref: str | None) -> ModelSpec:
    """:func:`find` for an embedding version, as its engines take it."""
    return find(conn, "embedding", ref).spec


def _unknown(conn: psycopg.Connection, kind: Kind, ref: str | int) -> str:
    if kind == "text2sql":
        return f"no text2sql version {ref!r}"
    known = ", ".join(f"{r['name']}@{r['version']} (id {r['id']})"
                      for r in db.fetch_all(conn, "model_versions") if r["kind"] == kind)
    return f"no {kind} version {ref!r}; known: {known or 'none'}"


# ------------------------------------------------------------------------- registering
#: a registration that still meets a taken label (one inserted without the lock) tries again
REGISTER_ATTEMPTS = 5


def register_under_lock(conn: psycopg.Connection, name: str, choose: Callable[[], str],
                        insert: Callable[[str], int]) -> tuple[str, int]:
    """Choose a free version label of ``name`` and insert the version with it, in one
    transaction holding the name's advisory lock: two runs registering at once get two
    labels. Returns the label and the new version's id."""
    for attempt in range(REGISTER_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(schema.query("lock_model_name"), {"name": name})
                version = choose()
                return version, insert(version)
        except psycopg.errors.UniqueViolation:
            if attempt == REGISTER_ATTEMPTS - 1:
                raise
            logger.info("%s@%s was registered meanwhile; taking the next label", name, version)
    raise AssertionError("unreachable")


def insert(conn: psycopg.Connection, *, kind: Kind, name: str, version: str, fmt: str,
           artifact: str, dimensions: int | None, max_seq_length: int | None,
           metrics: dict[str, Any], parent_id: int | None = None) -> int:
    """A new version: ready, inactive and without traffic (``pgfleet ab set`` serves it);
    its id. A text2sql version has no dimensions."""
    row = db.fetch_one(conn, "register_version", {
        "kind": kind, "name": name, "version": version, "format": fmt, "artifact": artifact,
        "dimensions": dimensions, "max_seq_length": max_seq_length, "metrics": Jsonb(metrics),
        "parent_id": parent_id})
    if row is None:   # INSERT ... RETURNING returns the row it inserted
        raise AssertionError(f"registering {name}@{version} returned no id")
    return int(row["id"])


def taken_labels(conn: psycopg.Connection, name: str) -> set[str]:
    """The version labels model ``name`` has, retired ones included."""
    return {r["version"] for r in db.fetch_all(conn, "version_labels", {"name": name})}


def label_from_base(taken: Iterable[str], base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... the first not ``taken``."""
    taken = set(taken)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def numbered_label(taken: Iterable[str]) -> str:
    """``v<N>``: N one more than the labels ``taken``, or the first free one above."""
    taken = set(taken)
    n = len(taken) + 1
    while f"v{n}" in taken:
        n += 1
    return f"v{n}"
