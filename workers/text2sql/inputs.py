"""What the model reads: the question and only the tables it seems to be about.

Byte-level models read every character, so the input stays short: :func:`relevant_tables`
keeps the tables the question names (a table's name, singular or plural, or a table a named
one points to by a foreign key when the question also names one of its columns), and falls
back to every table when it names none. Training and generation use the same rule, so the
model sees at inference the kind of input it was trained on. Pure: no database.
"""

from __future__ import annotations

import re

from workers.text2sql.schema_text import Schema, Table, model_input
from workers.text2sql.synth_templates import plural, singular, words


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
