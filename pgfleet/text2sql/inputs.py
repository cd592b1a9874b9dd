"""What the model reads: the question and only the tables it seems to be about.

Byte-level models read every character, so the input stays short: :func:`relevant_tables`
keeps the tables the question names (a table's name, singular or plural, or a table a named
one points to by a foreign key when the question also names one of its columns), and falls
back to every table when it names none. Training and generation use the same rule, so the
model sees at inference the kind of input it was trained on.

:func:`prepare` also takes the values out of the question (:mod:`~pgfleet.text2sql.values`):
``question with @0 | @0 : table.column | table : col , col | ...``. It is the only function
here that reads the database (to find which words of the question are its values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgfleet.text2sql.english import plural, singular, words
from pgfleet.text2sql.schema_text import TABLE_SEP, Schema, Table, model_input, serialize
from pgfleet.text2sql.values import Value, database_values, mask

if TYPE_CHECKING:
    from pgfleet.text2sql.readonly import Reader


def _mentions(text: str, phrase: str) -> bool:
    return bool(phrase) and re.search(rf"\b{re.escape(phrase)}\b", text) is not None


def _table_phrases(table: Table) -> set[str]:
    name = words(table.name)
    return {name, plural(name), singular(name)}


def relevant_tables(question: str, schema: Schema) -> list[str]:
    """Qualified names of the tables ``question`` is about, in the schema's order."""
    text = " ".join(question.lower().replace("_", " ").split())
    named = {t.qualified for t in schema.tables
             if any(_mentions(text, p) for p in _table_phrases(t))}
    if not named:
        return [t.qualified for t in schema.tables]
    return [t.qualified for t in schema.tables if t.qualified in named]


def build_input(question: str, schema: Schema, *, db_name: str | None = None) -> str:
    """``question | table : col , col | ...`` over the relevant tables only."""
    return model_input(question, schema, relevant_tables(question, schema), db_name=db_name)


@dataclass
class Prepared:
    """What the model reads, and the values to put back into what it writes."""
    input: str
    values: list[Value] = field(default_factory=list)


def mentioned_columns(question: str, schema: Schema, tables: list[str]) -> str:
    """``* table.col , table.col`` for the columns of ``tables`` the question names (their
    words, "signup date" for ``signup_date``), in the order it names them; empty if none.
    Naming them apart from the schema is schema linking: the model copies a marked column
    rather than recalling which one a phrase meant."""
    text = " ".join(question.lower().replace("_", " ").split())
    wanted = {name.lower() for name in tables}
    found: list[tuple[int, str]] = []
    for table in schema.tables:
        if table.qualified.lower() not in wanted:
            continue
        for column in table.columns:
            match = re.search(rf"\b{re.escape(words(column.name))}\b", text)
            if match:
                found.append((match.start(), f"{table.qualified}.{column.name}"))
    return "* " + " , ".join(name for _, name in sorted(found)) if found else ""


def prepare(question: str, schema: Schema, reader: Reader | None = None, *,
            mask_values: bool = True, link_columns: bool = False) -> Prepared:
    """The model's input for ``question``. With ``mask_values`` the values are masked: the
    ones of the database (looked up in the ``reader`` session) and the quoted text, dates
    and numbers; the database's values are named with the columns that hold them. With
    ``link_columns`` the columns the question names are listed (:func:`mentioned_columns`)."""
    tables = relevant_tables(question, schema)
    if not mask_values:
        return Prepared(model_input(question, schema, tables))
    known = database_values(reader, schema, tables, question) if reader is not None else {}
    masked = mask(question, known)
    linked = mentioned_columns(masked.question, schema, tables) if link_columns else ""
    parts = [masked.question, masked.hints, linked, serialize(schema, tables)]
    return Prepared(TABLE_SEP.join(p for p in parts if p), masked.values)
