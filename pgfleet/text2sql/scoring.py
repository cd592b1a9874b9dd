"""Execution accuracy, the defog sql-eval way: pure rules, no database.

A gold query may hold alternatives separated by ``;``, and ``{a.x, a.y}`` stands for any
non-empty subset of those columns in that order (a later ``GROUP BY {}`` groups by the
chosen subset): :func:`expand_gold` writes them all out. A generated result is correct
against one gold result when

1. **exact**: after dropping duplicate rows, ordering the columns by name and, unless order
   matters (:func:`order_matters`), sorting the rows, both have the same shape and values
   (NULLs equal, numbers compared by value whatever their type); or
2. **subset**: every gold column equals a distinct generated column as a sorted list of
   values (names and types ignored), and the rows then agree on those columns. Extra
   generated columns are allowed, extra rows are not, and an empty gold result never counts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_ORDER_WORDS = re.compile(r"\b(order|sort|arrange)\b", re.IGNORECASE)
_SUBSET = re.compile(r"\{([^{}]*[^{}\s][^{}]*)\}")
SIGNIFICANT_DIGITS = 10


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[Any, ...]]


# ------------------------------------------------------------------------- gold queries
def split_statements(text: str) -> list[str]:
    """``text`` split on semicolons outside quotes; empty parts dropped."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in ("'", '"'):
            quote = char
        elif char == ";":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def expand_gold(text: str) -> list[str]:
    """Every acceptable gold query: each ``;`` alternative, with its first ``{...}`` column
    set replaced by each non-empty subset (in order), ``{}`` by the same subset."""
    out: list[str] = []
    for query in split_statements(text):
        match = _SUBSET.search(query)
        if match is None:
            out.append(query)
            continue
        options = [o.strip() for o in match[1].split(",") if o.strip()]
        for size in range(1, len(options) + 1):
            for chosen in itertools.combinations(options, size):
                columns = ", ".join(chosen)
                rest = query[match.end():].replace("{}", columns)
                out.append(query[:match.start()] + columns + rest)
    return list(dict.fromkeys(out))


def order_matters(category: str, question: str) -> bool:
    """Rows are compared in order for the order_by category, or when the question asks to
    order, sort or arrange."""
    return category == "order_by" or bool(_ORDER_WORDS.search(question))


# ------------------------------------------------------------------------- values
def canonical(value: Any) -> Any:
    """A value in a form that compares by meaning: integral numbers as int, others as float
    rounded to 10 significant digits (numeric, float and integer results agree)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal | float):
        if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            return int(value)
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            return str(number)
        return float(f"{number:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def sort_key(value: Any) -> tuple:
    """A total order over mixed values: NULL first, then numbers, text, times, the rest."""
    if value is None:
        return (0,)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, dt.date | dt.time):
        return (3, type(value).__name__, value.isoformat())
    if isinstance(value, dt.timedelta):
        return (4, value.total_seconds())
    return (9, type(value).__name__, repr(value))


def _row_key(row: Sequence[Any]) -> tuple:
    return tuple(sort_key(v) for v in row)


def normalized(table: Table, ordered: bool) -> list[tuple[Any, ...]]:
    """Rows with columns ordered by name, duplicates dropped, sorted unless ``ordered``."""
    order = sorted(range(len(table.columns)), key=lambda i: table.columns[i])
    rows = list(dict.fromkeys(tuple(canonical(row[i]) for i in order) for row in table.rows))
    return rows if ordered else sorted(rows, key=_row_key)


# ------------------------------------------------------------------------- comparing
def exact_match(gold: Table, generated: Table, ordered: bool) -> bool:
    return (len(gold.columns) == len(generated.columns)
            and normalized(gold, ordered) == normalized(generated, ordered))


def subset_match(gold: Table, generated: Table, ordered: bool) -> bool:
    if not gold.rows:
        return False
    gold_columns = _columns(gold)
    generated_columns = _columns(generated)
    sorted_generated = {j: sorted(col, key=sort_key) for j, col in enumerate(generated_columns)}
    matched: list[int] = []
    for column in gold_columns:
        wanted = sorted(column, key=sort_key)
        j = next((j for j, col in sorted_generated.items() if col == wanted), None)
        if j is None:
            return False
        matched.append(j)
        del sorted_generated[j]
    projected = Table(gold.columns, [tuple(row[j] for j in matched) for row in generated.rows])
    return normalized(gold, ordered) == normalized(projected, ordered)


def compare(gold: Table, generated: Table, ordered: bool) -> str | None:
    """"exact", "subset" or None (wrong)."""
    if exact_match(gold, generated, ordered):
        return "exact"
    if subset_match(gold, generated, ordered):
        return "subset"
    return None


def _columns(table: Table) -> list[list[Any]]:
    return [[canonical(row[i]) for row in table.rows] for i in range(len(table.columns))]
