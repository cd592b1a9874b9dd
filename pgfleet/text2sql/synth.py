"""A bootstrap set of (question, sql) examples generated from the live schema by templates.

The schema is read from the catalog (:mod:`~pgfleet.text2sql.schema_text`) and each table
profiled: its row count, each column's kind (text, number, date, boolean) and distinct
count, and real values sampled from it (a pseudo-random pick fixed by the seed). The
templates in :mod:`~pgfleet.text2sql.synth_templates` turn these into SQL, with values
quoted as SQL literals by psycopg and identifiers by the server's ``quote_ident``, and into
two to four English phrasings each. Every SQL must pass
:func:`~pgfleet.text2sql.guard.check_sql` (allow-list, then EXPLAIN in the reader session);
the rest is dropped and counted. The same schema, data and seed give the same examples.

What this is good for: teaching a model the schema's names, its values, and the shape of
common questions. It is no substitute for real questions (see docs/text2sql.md).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

import schema as sql_files
from pgfleet.text2sql.examples import Example
from pgfleet.text2sql.guard import check_sql
from pgfleet.text2sql.readonly import Reader
from pgfleet.text2sql.schema_text import Schema, Table, introspect
from pgfleet.text2sql.synth_templates import TEMPLATES, Candidate, ColumnInfo, Context, TableInfo

logger = logging.getLogger(__name__)

SAMPLE_VALUES = 8
MAX_VALUE_CHARS = 60
DEFAULT_PER_TEMPLATE = 200
DEFAULT_PHRASINGS = 2

_NUMBER = ("smallint", "integer", "bigint", "numeric", "real", "double precision", "money")
_TEXT = ("text", "character varying", "character", "citext", "varchar", "char", "name")
_DATE = ("date", "timestamp")


@dataclass
class SynthResult:
    examples: list[Example] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)      # kept, per template
    dropped: Counter = field(default_factory=Counter)     # failed check_sql, per template
    reasons: dict[str, str] = field(default_factory=dict)  # a first reason per template


def synthesize(conn: psycopg.Connection, reader: Reader, *, schema: Schema | None = None,
               seed: int = 0, per_template: int = DEFAULT_PER_TEMPLATE,
               phrasings: int = DEFAULT_PHRASINGS, db_name: str | None = None) -> SynthResult:
    """Examples for the tables of ``schema`` (introspected from ``conn``, the fleet's, when
    not given): at most ``per_template`` SQL queries per template, each with ``phrasings``
    questions. Each SQL is checked in ``reader``, a session of the reader login."""
    from pgfleet.text2sql.readonly import check_same_database

    if per_template < 1 or phrasings < 1:
        raise ValueError("per_template and phrasings must be at least 1")
    check_same_database(reader, conn)
    schema = schema if schema is not None else introspect(conn)
    tables = [profile(conn, t, seed) for t in schema.tables]
    ctx = Context(conn, _quoted_names(conn, schema), {t.table.qualified: t for t in tables})
    result = SynthResult()
    for name, template in TEMPLATES.items():
        rng = random.Random(f"{seed}:{name}")
        candidates = [c for t in tables for c in template(ctx, t)]
        rng.shuffle(candidates)
        _take(reader, name, candidates, rng, per_template, phrasings, db_name, result)
    logger.info("synthesized text-to-SQL examples",
                extra={"examples": len(result.examples), "dropped": sum(result.dropped.values())})
    return result


def _take(reader: Reader, name: str, candidates: list[Candidate], rng: random.Random,
          per_template: int, phrasings: int, db_name: str | None, result: SynthResult) -> None:
    seen: set[str] = set()
    kept = 0
    for candidate in candidates:
        if kept >= per_template:
            break
        if candidate.sql in seen:
            continue
        seen.add(candidate.sql)
        verdict = check_sql(candidate.sql, reader)
        if not verdict.ok:
            result.dropped[name] += 1
            result.reasons.setdefault(name, " ".join(verdict.reasons))
            continue
        kept += 1
        questions = list(dict.fromkeys(candidate.questions))
        for question in rng.sample(questions, min(phrasings, len(questions))):
            result.examples.append(Example(question, candidate.sql, db_name,
                                           f"synth:{name}", name))
            result.counts[name] += 1


# ------------------------------------------------------------------------- profiling
def column_kind(type_name: str) -> str:
    """text, number, date, bool or other, from a ``format_type`` name."""
    base = type_name.split("(", 1)[0].strip().lower()
    if base in _NUMBER:
        return "number"
    if base in _TEXT:
        return "text"
    if base.startswith(_DATE):
        return "date"
    if base == "boolean":
        return "bool"
    return "other"


def profile(conn: psycopg.Connection, table: Table, seed: int) -> TableInfo:
    """Row count, and per usable column its kind, distinct count and sampled values."""
    keys = set(table.primary_key) | {c for fk in table.foreign_keys for c in fk.columns}
    info = TableInfo(table, rows=0)
    for column in table.columns:
        kind = column_kind(column.type)
        if kind == "other":
            continue
        rows, distinct = _stats(conn, table, column.name)
        info.rows = rows
        values = _sample(conn, table, column.name, seed) if distinct else []
        info.columns.append(ColumnInfo(column, kind, distinct, values,
                                       is_key=column.name in keys or _id_like(column.name)))
    return info


def _stats(conn: psycopg.Connection, table: Table, column: str) -> tuple[int, int]:
    query = sql.SQL(sql_files.query("text2sql_column_stats")).format(
        table=_table_ident(table), column=sql.Identifier(column))
    row = conn.execute(query).fetchone()
    assert row is not None  # count(*), count(DISTINCT ...): always one row
    rows, distinct = row
    return int(rows), int(distinct)


def _sample(conn: psycopg.Connection, table: Table, column: str, seed: int) -> list:
    query = sql.SQL(sql_files.query("text2sql_sample_values")).format(
        table=_table_ident(table), column=sql.Identifier(column))
    rows = conn.execute(query, {"seed": str(seed), "limit": SAMPLE_VALUES * 2}).fetchall()
    values = [r[0] for r in rows if _usable(r[0])]
    return values[:SAMPLE_VALUES]


def _usable(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= MAX_VALUE_CHARS and value.isprintable() and value == value.strip()
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    return True


def _id_like(name: str) -> bool:
    lowered = name.lower()
    return lowered == "id" or lowered.endswith("_id")


def _table_ident(table: Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def _quoted_names(conn: psycopg.Connection, schema: Schema) -> dict[str, str]:
    names = sorted({n for t in schema.tables for n in (t.schema, t.name, *(c.name for c in
                                                                          t.columns))})
    rows = conn.execute(sql_files.query("text2sql_quote_idents"), {"names": names}).fetchall()
    return dict(rows)
