"""Text-to-SQL examples: (question, sql) pairs loaded from a file, checked, stored.

A file is a CSV (header ``question,sql[,db_name]``) or JSONL (one object per line with
``question``, ``sql`` and optionally ``db_name``). Loading is two passes, both reporting
every problem with its line: the rows themselves (missing, empty or unknown fields,
malformed lines), then each example's SQL against the live schema with
:func:`~pgfleet.text2sql.guard.check_sql` (the allow-list, then EXPLAIN in a session of the
reader login), so that a typo in a column name is found when the file is loaded, not when a
model has learned it.

``db_name`` says what an example targets: empty for the fleet's own database, else a schema
of it or another database on the same server (checked there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import schema
from pgfleet import records
from pgfleet.text2sql.guard import check_sql
from pgfleet.text2sql.readonly import Reader

FIELDS = ("question", "sql", "db_name")
REQUIRED = ("question", "sql")
MAX_TEXT_CHARS = 20_000


@dataclass
class Example:
    question: str
    sql: str
    db_name: str | None = None
    source: str = ""
    template: str | None = None
    line: int = 0


ExampleProblem = records.Problem


@dataclass
class ParsedExamples:
    examples: list[Example] = field(default_factory=list)
    problems: list[ExampleProblem] = field(default_factory=list)


# ------------------------------------------------------------------------- parsing files
def parse_file(path: Path) -> ParsedExamples:
    """Examples from a CSV or JSONL file; every bad row is reported with its line."""
    text = records.read_text(path, (".jsonl", ".ndjson", ".csv"), "a .csv or .jsonl file")
    source = f"file:{path.name}"
    return parse_csv(text, source) if path.suffix.lower() == ".csv" else parse_jsonl(text, source)


def _collect(items, source: str) -> ParsedExamples:
    out = ParsedExamples()
    for number, item in items:
        if isinstance(item, records.Problem):
            out.problems.append(item)
        else:
            _validate(item, number, source, out)
    return out


def parse_jsonl(text: str, source: str) -> ParsedExamples:
    return _collect(records.jsonl_items(text, "question and sql"), source)


def parse_csv(text: str, source: str) -> ParsedExamples:
    optional = [f for f in FIELDS if f not in REQUIRED]
    return _collect(records.csv_items(
        text, required=REQUIRED, optional=optional,
        expected="question and sql (and optionally db_name)"), source)


def _validate(item: dict[str, Any], number: int, source: str, out: ParsedExamples) -> None:
    unknown = set(item) - set(FIELDS)
    if unknown:
        out.problems.append(ExampleProblem(number, f"unknown fields {sorted(unknown)}; expected "
                                                   "question, sql and optionally db_name"))
        return
    texts = []
    for name in REQUIRED:
        value = item.get(name)
        if not isinstance(value, str):
            out.problems.append(ExampleProblem(number, f"{name} is missing or not a string"))
            return
        if not value.strip():
            out.problems.append(ExampleProblem(number, f"{name} is empty"))
            return
        if len(value) > MAX_TEXT_CHARS:
            out.problems.append(ExampleProblem(number, f"{name} is longer than "
                                                       f"{MAX_TEXT_CHARS} characters"))
            return
        texts.append(value.strip())
    db_name = item.get("db_name")
    if db_name is not None and (not isinstance(db_name, str) or not db_name.strip()):
        out.problems.append(ExampleProblem(number, "db_name must be a non-empty string when "
                                                   "given"))
        return
    out.examples.append(Example(texts[0], texts[1], db_name.strip() if db_name else None,
                                source, None, number))


# ------------------------------------------------------------------------- checking SQL
def check_examples(reader: Reader, examples: Iterable[Example]) -> list[ExampleProblem]:
    """Check every example's SQL on the live schema, in ``reader`` (a session of the reader
    login); one problem per failing example.

    An example with a ``db_name`` is checked with that schema first on the search path when
    it is a schema of this database, else in the database of that name (the same login)."""
    by_target: dict[str | None, list[Example]] = {}
    for example in examples:
        by_target.setdefault(example.db_name, []).append(example)
    problems: list[ExampleProblem] = []
    for target, group in by_target.items():
        problems += _check_target(reader, target, group)
    return sorted(problems, key=lambda p: p.line)


def _check_target(reader: Reader, target: str | None,
                  group: list[Example]) -> list[ExampleProblem]:
    if target is None:
        return _check_all(reader, group)
    conn = reader.conn
    if _is_schema(conn, target):
        saved = _one_value(conn, "text2sql_search_path")
        path = sql.Identifier(target).as_string(conn) + ", public"
        conn.execute(schema.query("text2sql_set_search_path"), {"search_path": path})
        try:
            return _check_all(reader, group)
        finally:
            conn.execute(schema.query("text2sql_set_search_path"), {"search_path": saved})
    if _is_database(conn, target):
        with reader.for_database(target) as other:
            return _check_all(other, group)
    return [ExampleProblem(e.line, f"db_name {target!r} is neither a schema of this database "
                                   "nor a database on this server") for e in group]


def _check_all(reader: Reader, group: list[Example]) -> list[ExampleProblem]:
    problems = []
    for example in group:
        verdict = check_sql(example.sql, reader)
        if not verdict.ok:
            problems.append(ExampleProblem(example.line, "the SQL does not pass the guard: "
                                                         + " ".join(verdict.reasons)))
    return problems


def _is_schema(conn: psycopg.Connection, name: str) -> bool:
    return bool(_one_value(conn, "text2sql_schema_exists", {"name": name}))


def _is_database(conn: psycopg.Connection, name: str) -> bool:
    return bool(_one_value(conn, "text2sql_database_exists", {"name": name}))


def _one_value(conn: psycopg.Connection, name: str,
               params: dict[str, Any] | None = None) -> Any:
    """The value of a named query that always returns one row of one column."""
    row = conn.execute(schema.query(name), params).fetchone()
    assert row is not None, f"query {name} returned no row"
    return row[0]


# ------------------------------------------------------------------------- storing
def insert_examples(conn: psycopg.Connection, examples: list[Example]) -> int:
    """Insert examples, skipping those already stored; returns how many were new."""
    if not examples:
        return 0
    with conn.transaction():
        cur = conn.execute(schema.query("text2sql_insert_examples"), {
            "questions": [e.question for e in examples], "sqls": [e.sql for e in examples],
            "db_names": [e.db_name for e in examples], "sources": [e.source for e in examples],
            "templates": [e.template for e in examples]})
    return cur.rowcount



@dataclass
class LoadReport:
    valid: int = 0                                  # rows that parsed and passed the guard
    loaded: int = 0                                 # new rows stored
    stored: bool = False                            # whether the good rows were stored
    problems: list[ExampleProblem] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return len(self.problems)


def load_file(conn: psycopg.Connection, path: Path, *, reader: Reader,
              skip_bad: bool = False) -> LoadReport:
    """Parse ``path``, check every example's SQL (in ``reader``), store the examples (through
    ``conn``, the fleet's). Nothing is stored when any row is bad, unless ``skip_bad`` (then
    the good ones are)."""
    from pgfleet.text2sql.readonly import check_same_database

    check_same_database(reader, conn)
    parsed = parse_file(path)
    problems = parsed.problems + check_examples(reader, parsed.examples)
    failing = {p.line for p in problems}
    good = [e for e in parsed.examples if e.line not in failing]
    report = LoadReport(valid=len(good), problems=sorted(problems, key=lambda p: p.line))
    if good and (skip_bad or not problems):
        report.loaded = insert_examples(conn, good)
        report.stored = True
    return report
