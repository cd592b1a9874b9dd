"""Routing a request to a model version, for either kind: the version named, else one of
the serving versions of the model, chosen by the A/B split (sticky for a key, random
without one; see :mod:`pgfleet.models.splits`)."""

from __future__ import annotations

import psycopg

from pgfleet import db
from pgfleet.errors import UnknownModelVersion
from pgfleet.models import splits, versions
from pgfleet.models.versions import Kind, Version


def serving(conn: psycopg.Connection, kind: Kind, name: str) -> list[Version]:
    """The versions of model ``name`` that serve traffic, in id order (the split's order)."""
    return [Version.from_row(r)
            for r in db.fetch_all(conn, "serving_versions", {"kind": kind, "name": name})]


def route(conn: psycopg.Connection, kind: Kind, ref: str | int | None = None,
          key: str | None = None, name: str | None = None) -> Version:
    """The version that answers: the one ``ref`` names; else one of the serving versions of
    model ``name`` (default: the active version's model), by its split, the same for every
    request with the same ``key``."""
    if ref is not None:
        return versions.find(conn, kind, ref)
    if name is None:
        name = versions.find(conn, kind, None).name
    return choose(name, serving(conn, kind, name), key)


def choose(name: str, candidates: list[Version], key: str | None = None) -> Version:
    """The one of ``candidates`` (model ``name``'s serving versions, from :func:`serving`)
    that answers ``key``, by the split."""
    if not candidates:
        raise UnknownModelVersion(f"no version of {name} serves traffic")
    chosen = splits.assign(name, [(v.version, v.traffic_percent) for v in candidates], key=key)
    return next(v for v in candidates if v.version == chosen)
