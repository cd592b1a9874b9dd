"""Values in a question, masked for the model and put back into its SQL.

A small model trained from scratch learns the shape of a query from a few thousand examples
but copies values (a name, a date, an amount) from the question into the SQL poorly: a value
it never saw in training is a sequence of pieces it was never taught to reproduce. So values
are taken out before the model reads the question and put back into the SQL it writes
(variable anonymization, as in Finegan-Dollak et al., 2018, with the value linking of
BRIDGE, Lin et al., 2020):

* **Values of the database.** Every run of up to :data:`MAX_NGRAM` words of the question is
  looked up in the text columns of the tables it may be about (``lower(col) = ANY(...)``, in
  the reader session, read-only, with a timeout). A match becomes ``@0`` and the model is told
  where it was found: ``@0 : customers.name``. The database's spelling is kept, so "PARIS"
  in the question becomes ``'Paris'`` in the SQL.
* **Quoted text, dates and numbers** anywhere in the question (``'...'``, ``2024-03-01``,
  ``79.50``, the 3 of "top 3").

Placeholders are numbered in order of appearance; a value given twice gets one placeholder.
For training, :func:`mask_sql` replaces each SQL literal equal to a masked value with its
placeholder, keeping the quotes: ``name = '@0'``, ``price > @1``, ``LIMIT @2``. The model
writes placeholders; :func:`unmask_sql` reads its SQL token by token and puts the values back
so that none can leave the literal it is in (``LIKE '%@0%'`` with ``x' OR '1'='1`` stays one
string), and refuses a candidate that names a placeholder the question does not have.

The rule is the same at training and at inference, so the model reads at inference the kind
of input it learned from. Pure apart from :func:`database_values`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from psycopg import sql

from pgfleet.text2sql.schema_text import Schema
from schema import query as named_query  # `schema` is a parameter name below

if TYPE_CHECKING:
    from pgfleet.text2sql.readonly import Reader

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

    lookup = known or {}
    for start, end, text in spans(question) if lookup else ():
        value = lookup.get(text.lower())
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


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_WORD_CHAR = re.compile(r"[\w$&]")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def unmask_sql(text: str, values: Sequence[Value]) -> str:
    """The model's SQL with the values put back; :class:`UnknownPlaceholder` when it names a
    value the question does not have.

    The SQL is read token by token as PostgreSQL reads it, so that a value can never end
    the literal it is put in: inside a string literal (``LIKE '%@0%'``) the value's quotes
    are doubled (and its backslashes too in an ``E'...'`` string); outside one, a
    placeholder becomes a literal of its own (``'...'``, or a plain number, in parentheses
    when negative), apart from any word before it. Placeholders in quoted identifiers and
    comments are left alone; a value that holds the tag of the dollar quote it would go in
    is refused (a ValueError, which rejects the beam)."""
    out: list[str] = []
    at, size = 0, len(text)
    while at < size:
        token = _token_end(text, at)
        if token is not None:
            end, closed = token
            out.append(_fill_token(text[at:end], values, escapes=_escape_string(text, at))
                       if closed else text[at:end])  # unterminated: no value goes in
            at = end
            continue
        match = _PLACEHOLDER_AT.match(text, at) if text[at] == "@" else None
        if match is None:
            out.append(text[at])
            at += 1
            continue
        value = _value(values, int(match.group(1)))
        literal = value.text if _is_number(value) else _literal(value.text)
        if literal.startswith("-"):
            literal = f"({literal})"  # never `--`, the start of a comment
        if out and _WORD_CHAR.match(out[-1][-1:]):
            literal = " " + literal  # never e'...', u&'...' or a longer name
        out.append(literal)
        at = match.end()
    return "".join(out)


_PLACEHOLDER_AT = re.compile(r"@(\d+)(?!\d)")


def _value(values: Sequence[Value], index: int) -> Value:
    if index >= len(values):
        raise UnknownPlaceholder(f"The SQL uses value @{index}, but the question has "
                                 f"{len(values) or 'no'} value(s).")
    return values[index]


def _is_number(value: Value) -> bool:
    return value.kind == "number" and _PLAIN_NUMBER.fullmatch(value.text) is not None


def _token_end(text: str, at: int) -> tuple[int, bool] | None:
    """Where the literal, quoted identifier or comment starting at ``at`` ends, and whether
    it is closed there; None when none starts there. An unterminated one runs to the end."""
    char = text[at]
    if char == "'":
        return _quoted_end(text, at, "'", backslashes=_escape_string(text, at))
    if char == '"':
        return _quoted_end(text, at, '"', backslashes=False)
    if text.startswith("--", at):
        newline = text.find("\n", at)
        return (len(text), True) if newline < 0 else (newline + 1, True)
    if text.startswith("/*", at):
        return _comment_end(text, at)
    if char == "$" and not (at and _WORD_CHAR.match(text[at - 1])):
        tag = _DOLLAR_TAG.match(text, at)
        if tag is not None:
            close = text.find(tag.group(0), tag.end())
            return (len(text), False) if close < 0 else (close + len(tag.group(0)), True)
    return None


def _quoted_end(text: str, at: int, quote: str, *, backslashes: bool) -> tuple[int, bool]:
    i, size = at + 1, len(text)
    while i < size:
        if backslashes and text[i] == "\\":
            i += 2
        elif text[i] != quote:
            i += 1
        elif text.startswith(quote * 2, i):
            i += 2  # a doubled quote is part of the text
        else:
            return i + 1, True
    return size, False


def _comment_end(text: str, at: int) -> tuple[int, bool]:
    depth, i = 0, at
    while i < len(text):  # PostgreSQL's block comments nest
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i, True
        else:
            i += 1
    return len(text), False


def _escape_string(text: str, quote: int) -> bool:
    """Whether the literal whose quote is at ``quote`` is an ``E'...'`` string."""
    return (quote > 0 and text[quote - 1] in "eE"
            and not (quote > 1 and _WORD_CHAR.match(text[quote - 2])))


def _fill_token(token: str, values: Sequence[Value], *, escapes: bool) -> str:
    """A closed token of the model's SQL with the values put in, when it is a literal."""
    if token[0] == "'":
        def put(match: re.Match) -> str:
            value = _value(values, int(match.group(1))).text
            if escapes:
                value = value.replace("\\", "\\\\")
            return value.replace("'", "''")

        return "'" + _PLACEHOLDER_AT.sub(put, token[1:-1]) + "'"
    if token[0] == "$":
        opening = _DOLLAR_TAG.match(token)
        if opening is None:  # _token_end starts a token with $ only at a dollar quote's tag
            raise ValueError(f"not a dollar-quoted string: {token[:40]!r}")
        tag = opening.group(0)

        def put_dollar(match: re.Match) -> str:
            value = _value(values, int(match.group(1))).text
            if tag in value or value.endswith("$"):
                raise ValueError(f"The value @{match.group(1)} cannot go into a dollar-quoted "
                                 f"string: it holds {tag}.")
            return value

        return tag + _PLACEHOLDER_AT.sub(put_dollar, token[len(tag):-len(tag)]) + tag
    return token  # a quoted identifier or a comment


# ------------------------------------------------------------------------- the database
def database_values(reader: Reader, schema: Schema, tables: Iterable[str],
                    question: str, *, timeout_ms: int = LOOKUP_TIMEOUT_MS) -> dict[str, Value]:
    """The runs of words of ``question`` that are values of a text column of ``tables``
    (lower-cased text -> :class:`Value` with the database's spelling and every column that
    holds it). Looked up read-only in ``reader``, a session of the reader login."""
    from pgfleet.text2sql.readonly import reader_transaction

    candidates = sorted({text.lower() for _, _, text in spans(" ".join(question.split()))
                         if len(text) <= MAX_VALUE_CHARS})
    wanted = {name.lower() for name in tables}
    columns = [(t, c) for t in schema.tables if t.qualified.lower() in wanted
               for c in t.columns if c.type.split("(")[0].strip().lower() in _TEXT_TYPES]
    if not candidates or not columns:
        return {}
    found: dict[str, tuple[str, list[str]]] = {}
    with reader_transaction(reader, timeout_ms=timeout_ms) as conn:
        for table, column in columns:
            query = sql.SQL(named_query("text2sql_matching_values")).format(
                col=sql.Identifier(column.name), tbl=sql.Identifier(*table.qualified.split(".")))
            for (text,) in conn.execute(query, (candidates,)):
                spelled, where = found.setdefault(text.lower(), (text, []))
                where.append(f"{table.qualified}.{column.name}")
    return {key: Value(text, "text", tuple(where)) for key, (text, where) in found.items()}
