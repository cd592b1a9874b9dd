"""Looking up model versions by what a person types: an id, ``v1``, or ``name@v1``."""

from __future__ import annotations

import psycopg

from workers import db
from workers.engines.base import ModelSpec
from workers.errors import UnknownModelVersion


def embedding_version(conn: psycopg.Connection, ref: str | None) -> ModelSpec:
    rows = [r for r in db.fetch_all(conn, "model_versions") if r["kind"] == "embedding"]
    if ref is None:
        active = [r for r in rows if r["active"]]
        if not active:
            raise UnknownModelVersion("no active embedding version; activate one first")
        return ModelSpec.from_row(max(active, key=lambda r: (r["traffic_percent"], r["id"])))
    for row in rows:
        if ref in (str(row["id"]), row["version"], f"{row['name']}@{row['version']}"):
            return ModelSpec.from_row(row)
    known = ", ".join(f"{r['name']}@{r['version']} (id {r['id']})" for r in rows) or "none"
    raise UnknownModelVersion(f"no embedding version {ref!r}; known: {known}")
