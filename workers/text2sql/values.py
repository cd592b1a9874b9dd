"""Values in a question, masked for the model and put back into its SQL.

A small model trained from scratch learns the shape of a query from a few thousand examples
but copies values (a name, a date, an amount) from the question into the SQL poorly: a value
it never saw in training is a sequence of pieces it was never taught to reproduce. So values
are taken out before the model reads the question and put back into the SQL it writes
(variable anonymization, as in Finegan-Dollak et al., 2018, with the value linking of
BRIDGE, Lin et al., 2020):

* **Values of the database.** Every run of up to :data:`MAX_NGRAM` words of the question is
  looked up in the text columns of the tables it may be about (``lower(col) = ANY(...)``, as
  the reader role, read-only, with a timeout). A match becomes ``@0`` and the model is told
  where it was found: ``@0 : customers.name``. The database's spelling is kept, so "PARIS"
  in the question becomes ``'Paris'`` in the SQL.
* **Quoted text, dates and numbers** anywhere in the question (``'...'``, ``2024-03-01``,
  ``79.50``, the 3 of "top 3").

Placeholders are numbered in order of appearance; a value given twice gets one placeholder.
For training, :func:`mask_sql` replaces each SQL literal equal to a masked value with its
placeholder, keeping the quotes: ``name = '@0'``, ``price > @1``, ``LIMIT @2``. The model
writes placeholders; :func:`unmask_sql` puts the values back as SQL literals (quotes in a
value doubled), and refuses a candidate that names a placeholder the question does not have.

The rule is the same at training and at inference, so the model reads at inference the kind
of input it learned from. Pure apart from :func:`database_values`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import psycopg
from psycopg import sql

from workers.text2sql.schema_text import Schema

#: the longest run of words looked up as a value of the database
MAX_NGRAM = 6
#: text values longer than this are not looked up (they are sentences, not values)
MAX_VALUE_CHARS = 80
LOOKUP_TIMEOUT_MS = 2000
_TEXT_TYPES = ("text", "character varying", "character", "citext", "varchar", "char", "name")

_EDGE = "?!,;:\"()"
_DATE = re.compile(r"(?<![\w-])\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?(?![\w-])")
_NUMBER = re.compile(r"(?<![\w.@-])-?\d+(?:\.\d+)?(?![\w.]*\w)")
_QUOTED = re.compile(r"'((?:[^']|'')+)'|\"([^\"]+)\"")
#: a SQL string literal, a quoted identifier, or a number, in SQL text
_SQL_LITERAL = re.compile(r"'((?:[^']|'')*)'|\"(?:[^\"]|\"\")*\"|(?<![\w.@])(\d+(?:\.\d+)?)(?![\w.])")
_PLACEHOLDER = re.compile(r"'@(\d+)'|@(\d+)(?!\d)")


@dataclass(frozen=True)
class Value:
    text: str                        # as the SQL should hold it
    kind: str                        # text, date or number
    columns: tuple[str, ...] = ()    # table.column where the database holds it


@dataclass
class Masked:
    question: str                    # with @0, @1, ... for the values
    values: list[Value] = field(default_factory=list)

    @property
    def hints(self) -> str:
        """``@0 : customers.name | @1 : orders.status`` for the values found in the database."""
        return " | ".join(f"@{i} : {' , '.join(v.columns)}"
                          for i, v in enumerate(self.values) if v.columns)


# ------------------------------------------------------------------------- the question
def spans(question: str) -> list[tuple[int, int, str]]:
    """Runs of 1..MAX_NGRAM words of ``question``: (start, end, text without edge
    punctuation), longest first."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", question)]
    found = []
    for size in range(min(MAX_NGRAM, len(words)), 0, -1):
        for i in range(len(words) - size + 1):
            start, end = words[i][0], words[i + size - 1][1]
            text = question[start:end]
            stripped = text.strip(_EDGE).rstrip(".").strip(_EDGE)
            if not stripped:
                continue
            start += text.index(stripped)
            found.append((start, start + len(stripped), stripped))
    return found


def mask(question: str, known: dict[str, Value] | None = None) -> Masked:
    """``question`` with its values replaced by placeholders. ``known`` maps the lower-cased
    text of database values to them (:func:`database_values`)."""
    question = " ".join(question.split())
    taken: list[tuple[int, int, Value]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e, _ in taken)

    for start, end, text in spans(question) if known else ():
        value = known.get(text.lower())
        if value is not None and free(start, end):
            taken.append((start, end, value))
    for match in _QUOTED.finditer(question):
        if free(match.start(), match.end()):
            taken.append((match.start(), match.end(),
                          Value((match.group(1) or "").replace("''", "'")
                                or match.group(2), "text")))
    for match in _DATE.finditer(question):
        if free(match.start(), match.end()):
            taken.append((match.start(), match.end(), Value(match.group(0), "date")))
    for match in _NUMBER.finditer(question):
        if free(match.start(), match.end()):
            taken.append((match.start(), match.end(), Value(match.group(0), "number")))
    taken.sort()
    values: list[Value] = []
    out, at = [], 0
    for start, end, value in taken:
        if value not in values:
            values.append(value)
        out.append(question[at:start] + f"@{values.index(value)}")
        at = end
    out.append(question[at:])
    return Masked("".join(out), values)


def _same(literal: str, value: Value, quoted: bool) -> bool:
    if literal == value.text:
        return True
    if quoted or value.kind != "number":
        return False
    try:
        return Decimal(literal) == Decimal(value.text)
    except InvalidOperation:
        return False


# ------------------------------------------------------------------------- the SQL
def mask_sql(text: str, values: Sequence[Value]) -> str:
    """``text`` with each literal equal to one of ``values`` replaced by its placeholder
    (quotes kept: ``'@0'``); other literals stay as they are."""
    def replace(match: re.Match) -> str:
        quoted, number = match.group(1), match.group(2)
        if quoted is None and number is None:
            return match.group(0)  # a quoted identifier
        literal = quoted.replace("''", "'") if quoted is not None else number
        for i, value in enumerate(values):
            if _same(literal, value, quoted is not None):
                return f"'@{i}'" if quoted is not None else f"@{i}"
        return match.group(0)

    return _SQL_LITERAL.sub(replace, text)


class UnknownPlaceholder(ValueError):
    pass


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def unmask_sql(text: str, values: Sequence[Value]) -> str:
    """The model's SQL with the values put back as literals; :class:`UnknownPlaceholder`
    when it names a value the question does not have."""
    def replace(match: re.Match) -> str:
        index = int(match.group(1) if match.group(1) is not None else match.group(2))
        if index >= len(values):
            raise UnknownPlaceholder(
                f"The SQL uses value @{index}, but the question has "
                f"{len(values) or 'no'} value(s).")
        value = values[index]
        if match.group(1) is not None or value.kind != "number":
            return _literal(value.text)
        return value.text

    return _PLACEHOLDER.sub(replace, text)


# ------------------------------------------------------------------------- the database
def database_values(conn: psycopg.Connection, schema: Schema, tables: Iterable[str],
                    question: str, *, timeout_ms: int = LOOKUP_TIMEOUT_MS) -> dict[str, Value]:
    """The runs of words of ``question`` that are values of a text column of ``tables``
    (lower-cased text -> :class:`Value` with the database's spelling and every column that
    holds it). Looked up read-only as the reader role; ``conn`` must be in autocommit."""
    from workers.text2sql.readonly import reader_transaction

    candidates = sorted({text.lower() for _, _, text in spans(" ".join(question.split()))
                         if len(text) <= MAX_VALUE_CHARS})
    wanted = {name.lower() for name in tables}
    columns = [(t, c) for t in schema.tables if t.qualified.lower() in wanted
               for c in t.columns if c.type.split("(")[0].strip().lower() in _TEXT_TYPES]
    if not candidates or not columns:
        return {}
    found: dict[str, tuple[str, list[str]]] = {}
    with reader_transaction(conn, timeout_ms=timeout_ms):
        for table, column in columns:
            query = sql.SQL("SELECT DISTINCT {col} FROM {tbl} WHERE lower({col}) = ANY(%s) "
                            "LIMIT 100").format(col=sql.Identifier(column.name),
                                                tbl=sql.Identifier(*table.qualified.split(".")))
            for (text,) in conn.execute(query, (candidates,)):
                spelled, where = found.setdefault(text.lower(), (text, []))
                where.append(f"{table.qualified}.{column.name}")
    return {key: Value(text, "text", tuple(where)) for key, (text, where) in found.items()}
