"""The live schema, read from the catalog and written as a text-to-SQL model reads it.

:func:`introspect` reads tables, columns (with types), primary and foreign keys of the given
schemas (``public`` by default), leaving out pgfleet's own tables (``docs`` is the user's
and stays). :func:`serialize` writes it PICARD-style, ``table : col , col | table2 : col``,
and :func:`model_input` puts the question in front: ``question | table : col , col | ...``.
Tables outside ``public`` are written qualified (``schema.table``), as SQL must name them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

import schema as sql_files

#: pgfleet's own tables: never shown to a model, never asked about
PGFLEET_TABLES = (
    "model_versions", "embeddings", "pending_embeddings", "model_cache", "inference_logs",
    "embedding_failures", "ab_history", "search_feedback", "training_pairs", "training_runs",
    "text2sql_examples", "pgfleet_migrations", "api_keys",
    "sources", "source_changes", "source_pending", "source_chunks", "source_failures",
)
#: the views a source creates (pgfleet.sources.catalog) are the fleet's too
SOURCE_VIEW_PREFIX = "pgfleet_source_"
TABLE_SEP = " | "
COLUMN_SEP = " , "


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool = False


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str  # qualified as in Table.qualified
    ref_columns: tuple[str, ...]


@dataclass
class Table:
    schema: str
    name: str
    columns: list[Column] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    foreign_keys: list[ForeignKey] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass
class Schema:
    tables: list[Table] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        wanted = name.lower()
        return next((t for t in self.tables
                     if wanted in (t.qualified.lower(), t.name.lower())), None)


def introspect(conn: psycopg.Connection, schemas: Iterable[str] | None = None, *,
               exclude: Iterable[str] = PGFLEET_TABLES) -> Schema:
    """Tables (and views) of ``schemas`` with their columns and keys, in a stable order."""
    names = list(schemas) if schemas is not None else ["public"]
    params = {"schemas": names, "exclude": list(exclude)}
    tables = {(s, t): Table(s, t) for s, t in conn.execute(
        sql_files.query("text2sql_tables"), params).fetchall()
        if not t.startswith(SOURCE_VIEW_PREFIX)}
    for nsp, rel, col, type_, not_null in conn.execute(
            sql_files.query("text2sql_columns"), {"schemas": names}).fetchall():
        if (nsp, rel) in tables:
            tables[(nsp, rel)].columns.append(Column(col, type_, not_null))
    for nsp, rel, kind, cols, ref_nsp, ref_rel, ref_cols in conn.execute(
            sql_files.query("text2sql_keys"), {"schemas": names}).fetchall():
        table = tables.get((nsp, rel))
        if table is None:
            continue
        if kind == "p":
            table.primary_key = tuple(cols)
        else:
            ref = ref_rel if ref_nsp == "public" else f"{ref_nsp}.{ref_rel}"
            table.foreign_keys.append(ForeignKey(tuple(cols), ref, tuple(ref_cols)))
    return Schema(list(tables.values()))


def user_schemas(conn: psycopg.Connection) -> list[str]:
    """Every schema that is not the system's, ``public`` first."""
    return [row[0] for row in conn.execute(sql_files.query("text2sql_user_schemas")).fetchall()]


def serialize(schema: Schema, tables: Iterable[str] | None = None) -> str:
    """``table : col , col | table2 : col , col``; only ``tables`` (names, in the schema's
    order; unknown ones ignored) when given, else every table."""
    chosen = schema.tables
    if tables is not None:
        wanted = {name.lower() for name in tables}
        chosen = [t for t in schema.tables
                  if t.qualified.lower() in wanted or t.name.lower() in wanted]
    return TABLE_SEP.join(f"{t.qualified} : " + COLUMN_SEP.join(c.name for c in t.columns)
                          for t in chosen)


def model_input(question: str, schema: Schema, tables: Iterable[str] | None = None, *,
                db_name: str | None = None) -> str:
    """What a text-to-SQL model reads: ``question | table : col , col | ...`` (with
    ``db_name`` after the question when given, as PICARD writes the database id)."""
    parts = [" ".join(question.split())]
    if db_name:
        parts.append(db_name)
    serialized = serialize(schema, tables)
    if serialized:
        parts.append(serialized)
    return TABLE_SEP.join(parts)
