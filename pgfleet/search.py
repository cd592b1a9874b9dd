"""Nearest-neighbour search over one version's vectors, the query embedded by that version's
own engine (vectors of two versions are never compared)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import schema
from workers.engines import Engine, ModelSpec


@dataclass
class Hit:
    doc_id: int
    score: float
    content: str
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "score": round(self.score, 6), "content": self.content,
                "metadata": self.metadata}


def search_sql(dims: int) -> sql.Composed:
    return sql.SQL(schema.query("search")).format(dims=sql.Literal(dims))


def search(conn: psycopg.Connection, engine: Engine, spec: ModelSpec, text: str, k: int,
           ) -> list[Hit]:
    if k < 1:
        raise ValueError("k must be at least 1")
    vector = engine.encode([text])[0]
    with conn.cursor(row_factory=dict_row) as cur:
        # HNSW returns at most ef_search candidates; ask for at least k
        cur.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, k)),))
        cur.execute(search_sql(spec.dimensions),
                    {"query": vector, "version_id": spec.version_id, "k": k})
        rows = cur.fetchall()
    return [Hit(r["id"], float(r["score"]), r["content"], r["metadata"]) for r in rows]
