"""The templates of :mod:`~pgfleet.text2sql.synth`: one SQL shape each, with English phrasings.

A template is a function of a profiled table that yields candidates: the SQL (identifiers
quoted by the server, values by psycopg as SQL literals, never pasted into the text) and
two to four phrasings of the question it answers (table and column names in English by
:mod:`~pgfleet.text2sql.english`). Which candidates and phrasings are kept is decided by the
caller, with a seeded random generator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

# words, plural, singular and article are importable from here too
from pgfleet.text2sql.english import article, plural, singular, words
from pgfleet.text2sql.schema_text import Column, ForeignKey, Table

MAX_CATEGORIES = 30
VALUES_PER_COLUMN = 6
LABEL_NAMES = ("name", "title", "label", "username", "full_name", "email", "code")


class Candidate(NamedTuple):
    sql: str
    questions: tuple[str, ...]


@dataclass
class ColumnInfo:
    column: Column
    kind: str  # text, number, date or bool
    distinct: int
    values: list[Any]
    is_key: bool = False

    @property
    def name(self) -> str:
        return self.column.name

    @property
    def words(self) -> str:
        return words(self.column.name)


@dataclass
class TableInfo:
    table: Table
    rows: int
    columns: list[ColumnInfo] = field(default_factory=list)

    @property
    def plural(self) -> str:
        return plural(words(self.table.name))

    @property
    def singular(self) -> str:
        return singular(words(self.table.name))

    def of(self, kind: str) -> list[ColumnInfo]:
        return [c for c in self.columns if c.kind == kind and not c.is_key and c.values]

    @property
    def categories(self) -> list[ColumnInfo]:
        """Columns with a few repeated values, to group by."""
        return [c for c in self.columns if c.kind in ("text", "bool") and not c.is_key
                and 2 <= c.distinct <= MAX_CATEGORIES and c.distinct < self.rows]

    @property
    def label(self) -> ColumnInfo | None:
        """The column that names a row (name, title, ...), to show it in joins."""
        texts = [c for c in self.columns if c.kind == "text" and c.values]
        for wanted in LABEL_NAMES:
            for column in texts:
                if column.name.lower() == wanted or column.name.lower().endswith("_" + wanted):
                    return column
        return next((c for c in texts if not c.is_key), None)


@dataclass
class Context:
    conn: psycopg.Connection
    quoted: dict[str, str]
    tables: dict[str, TableInfo]

    def table(self, table: Table) -> sql.Composable:
        name = self.quoted[table.name]
        return sql.SQL(name if table.schema == "public" else f"{self.quoted[table.schema]}.{name}")

    def col(self, name: str, table: Table | None = None) -> sql.Composable:
        column = sql.SQL(self.quoted[name])
        return column if table is None else self.table(table) + sql.SQL(".") + column

    def render(self, template: str, **parts: sql.Composable) -> str:
        return sql.SQL(template).format(**parts).as_string(self.conn)


Template = Callable[[Context, TableInfo], Iterator[Candidate]]


# ------------------------------------------------------------------------- values
def text(value: Any) -> str:
    """A value as a question writes it."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def literal(value: Any) -> sql.Literal:
    """A value as SQL writes it: a literal quoted by psycopg; dates as plain date strings."""
    if isinstance(value, dt.date):
        return sql.Literal(text(value))
    return sql.Literal(value)


def _rotate(forms: list[str], choices: list[str], **fields: str) -> tuple[str, ...]:
    """Each phrasing with its own choice of word, so the set covers the synonyms."""
    return tuple(form.format(word=choices[i % len(choices)], **fields)
                 for i, form in enumerate(forms))


# ------------------------------------------------------------------------- projections
def select_columns(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    x = t.plural
    shown = [c for c in t.columns if not c.is_key]
    for i, a in enumerate(shown):
        for b in shown[i + 1:]:
            query = ctx.render("SELECT {a}, {b} FROM {t}", t=ctx.table(t.table),
                               a=ctx.col(a.name), b=ctx.col(b.name))
            yield Candidate(query, (f"list the {a.words} and {b.words} of all {x}",
                                    f"show the {a.words} and {b.words} of every {t.singular}",
                                    f"what are the {a.words} and {b.words} of the {x}?"))
    for c in t.categories:
        query = ctx.render("SELECT DISTINCT {c} FROM {t}", t=ctx.table(t.table),
                           c=ctx.col(c.name))
        yield Candidate(query, (f"what are the different {c.words} values of {x}?",
                                f"list the distinct {c.words} values of the {x}",
                                f"which {c.words} values do {x} have?"))


# ------------------------------------------------------------------------- filters, counts
def filter_eq(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("text"):
        for value in c.values[:VALUES_PER_COLUMN]:
            query = ctx.render("SELECT * FROM {t} WHERE {c} = {v}", t=ctx.table(t.table),
                               c=ctx.col(c.name), v=literal(value))
            x, cw, v = t.plural, c.words, text(value)
            yield Candidate(query, (f"list the {x} whose {cw} is {v}", f"show all {x} with {cw} {v}",
                                    f"which {x} have {cw} {v}?", f"find {x} where {cw} equals {v}"))


_COMPARISONS = {
    ">": ["greater than", "more than", "above"],
    "<": ["less than", "below", "under"],
    ">=": ["at least", "greater than or equal to"],
    "<=": ["at most", "no more than"],
}


def filter_num(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("number"):
        forms = ["list the {x} with {cw} {word} {v}",
                 "which {x} have " + article(c.words) + " {cw} {word} {v}?",
                 "show {x} whose {cw} is {word} {v}"]
        for value in c.values[:VALUES_PER_COLUMN]:
            for op, choices in _COMPARISONS.items():
                query = ctx.render("SELECT * FROM {t} WHERE {c} {op} {v}", op=sql.SQL(op),
                                   t=ctx.table(t.table), c=ctx.col(c.name), v=literal(value))
                yield Candidate(query, _rotate(forms, choices, x=t.plural, cw=c.words,
                                               v=text(value)))


def count_all(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    x = t.plural
    yield Candidate(ctx.render("SELECT count(*) FROM {t}", t=ctx.table(t.table)),
                    (f"how many {x} are there?", f"count the {x}",
                     f"what is the total number of {x}?", f"number of {x}"))


def count_filter(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("text"):
        for value in c.values[:VALUES_PER_COLUMN]:
            query = ctx.render("SELECT count(*) FROM {t} WHERE {c} = {v}", t=ctx.table(t.table),
                               c=ctx.col(c.name), v=literal(value))
            x, cw, v = t.plural, c.words, text(value)
            yield Candidate(query, (f"how many {x} have {cw} {v}?",
                                    f"count the {x} whose {cw} is {v}",
                                    f"what is the number of {x} with {cw} {v}?"))


# ------------------------------------------------------------------------- grouping, ranking
def group_count(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    x = t.plural
    for c in t.categories:
        parts = {"t": ctx.table(t.table), "c": ctx.col(c.name)}
        cw = c.words
        yield Candidate(ctx.render("SELECT {c}, count(*) FROM {t} GROUP BY {c}", **parts),
                        (f"how many {x} are there for each {cw}?", f"count the {x} per {cw}",
                         f"number of {x} by {cw}", f"for every {cw}, how many {x} are there?"))
        yield Candidate(ctx.render("SELECT {c}, count(*) FROM {t} GROUP BY {c} "
                                   "ORDER BY count(*) DESC LIMIT 1", **parts),
                        (f"which {cw} has the most {x}?", f"the {cw} with the largest number of {x}",
                         f"what is the most common {cw} among {x}?"))


_AGGREGATES = {
    "avg": ["average", "mean"],
    "sum": ["total"],
    "max": ["maximum", "highest", "largest"],
    "min": ["minimum", "lowest", "smallest"],
}


def aggregate(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    forms = ["what is the {word} {cw} of {x}?", "find the {word} {cw} across all {x}",
             "{word} {cw} of the {x}"]
    for c in t.of("number"):
        for func, choices in _AGGREGATES.items():
            query = ctx.render("SELECT {f}({c}) FROM {t}", f=sql.SQL(func),
                               t=ctx.table(t.table), c=ctx.col(c.name))
            yield Candidate(query, _rotate(forms, choices, x=t.plural, cw=c.words))


def group_aggregate(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    forms = ["{word} {nw} of {x} per {cw}", "what is the {word} {nw} of {x} for each {cw}?",
             "for each {cw}, give the {word} {nw} of the {x}"]
    for c in t.categories:
        for n in t.of("number"):
            for func, choices in _AGGREGATES.items():
                query = ctx.render("SELECT {c}, {f}({n}) FROM {t} GROUP BY {c}", f=sql.SQL(func),
                                   t=ctx.table(t.table), c=ctx.col(c.name), n=ctx.col(n.name))
                yield Candidate(query, _rotate(forms, choices, x=t.plural, cw=c.words,
                                               nw=n.words))


def top_n(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("number") + t.of("date"):
        high, low = (("latest", "most recent"), ("earliest", "oldest")) if c.kind == "date" \
            else (("highest", "largest"), ("lowest", "smallest"))
        for n in (1, 3, 5, 10):
            for order, (best, other) in (("DESC", high), ("ASC", low)):
                nulls = " NULLS LAST" if order == "DESC" and not c.column.not_null else ""
                query = ctx.render("SELECT * FROM {t} ORDER BY {c} {order} LIMIT {n}",
                                   order=sql.SQL(order + nulls), t=ctx.table(t.table),
                                   c=ctx.col(c.name), n=sql.Literal(n))
                yield Candidate(query, _top_questions(t, c.words, n, best, other, order))


def _top_questions(t: TableInfo, cw: str, n: int, best: str, other: str,
                   order: str) -> tuple[str, ...]:
    if n == 1:
        x = t.singular
        return (f"the {x} with the {best} {cw}", f"which {x} has the {other} {cw}?",
                f"show the {x} with the {best} {cw}")
    x = t.plural
    rank = "top" if order == "DESC" else "bottom"
    return (f"{rank} {n} {x} by {cw}", f"the {n} {x} with the {best} {cw}",
            f"which {n} {x} have the {other} {cw}?")


# ------------------------------------------------------------------------- joins
def _joins(ctx: Context, t: TableInfo) -> Iterator[tuple[ForeignKey, TableInfo, ColumnInfo]]:
    """Foreign keys of ``t`` to another table that has a label column."""
    for fk in t.table.foreign_keys:
        ref = ctx.tables.get(fk.ref_table)
        if ref is None or ref.table is t.table or ref.label is None:
            continue
        yield fk, ref, ref.label


def _on(ctx: Context, t: TableInfo, fk: ForeignKey, ref: TableInfo) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{a} = {b}").format(a=ctx.col(a, t.table), b=ctx.col(b, ref.table))
        for a, b in zip(fk.columns, fk.ref_columns, strict=True))


def _label_phrase(ref: TableInfo, label: ColumnInfo) -> str:
    lw = label.words
    return lw if lw.startswith(ref.singular) else f"{ref.singular} {lw}"


def join_fk(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for fk, ref, label in _joins(ctx, t):
        query = ctx.render("SELECT {t}.*, {label} FROM {t} JOIN {r} ON {on}",
                           t=ctx.table(t.table), r=ctx.table(ref.table),
                           label=ctx.col(label.name, ref.table), on=_on(ctx, t, fk, ref))
        x, rs, lw = t.plural, ref.singular, label.words
        yield Candidate(query, (f"list {x} with their {_label_phrase(ref, label)}",
                                f"show each {t.singular} along with the {lw} of its {rs}",
                                f"{x} and the {lw} of their {rs}"))


def join_filter(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for fk, ref, label in _joins(ctx, t):
        for value in label.values[:VALUES_PER_COLUMN]:
            query = ctx.render("SELECT {t}.* FROM {t} JOIN {r} ON {on} WHERE {label} = {v}",
                               t=ctx.table(t.table), r=ctx.table(ref.table),
                               label=ctx.col(label.name, ref.table), on=_on(ctx, t, fk, ref),
                               v=literal(value))
            x, rs, lw, v = t.plural, ref.singular, label.words, text(value)
            yield Candidate(query, (f"list the {x} of the {rs} whose {lw} is {v}",
                                    f"show all {x} for {rs} {v}",
                                    f"which {x} belong to the {rs} with {lw} {v}?"))


def join_count(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for fk, ref, label in _joins(ctx, t):
        query = ctx.render("SELECT {label}, count(*) FROM {t} JOIN {r} ON {on} GROUP BY {label}",
                           t=ctx.table(t.table), r=ctx.table(ref.table),
                           label=ctx.col(label.name, ref.table), on=_on(ctx, t, fk, ref))
        x, rs = t.plural, ref.singular
        yield Candidate(query, (f"how many {x} does each {rs} have?",
                                f"number of {x} per {_label_phrase(ref, label)}",
                                f"count the {x} of every {rs}"))


# ------------------------------------------------------------------------- dates
def _date_words(c: ColumnInfo) -> tuple[str, str]:
    """("verb", "created") for created_at, ("noun", "order date") for order_date."""
    lowered = c.name.lower()
    for suffix in ("_at", "_on"):
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return "verb", words(lowered[: -len(suffix)])
    return "noun", c.words


def _dated(t: TableInfo, c: ColumnInfo, relation: str, when: str) -> tuple[str, ...]:
    kind, w = _date_words(c)
    x = t.plural
    if kind == "verb":
        return (f"{x} {w} {relation} {when}", f"which {x} were {w} {relation} {when}?",
                f"list the {x} {w} {relation} {when}")
    a = article(w)
    return (f"{x} with {a} {w} {relation} {when}", f"which {x} have {a} {w} {relation} {when}?",
            f"list the {x} whose {w} is {relation} {when}")


def date_compare(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("date"):
        for value in c.values[:VALUES_PER_COLUMN]:
            day = text(value)
            for op, relation in ((">", "after"), ("<", "before")):
                query = ctx.render("SELECT * FROM {t} WHERE {c} {op} {v}", op=sql.SQL(op),
                                   t=ctx.table(t.table), c=ctx.col(c.name), v=literal(day))
                yield Candidate(query, _dated(t, c, relation, day))


def date_between(ctx: Context, t: TableInfo) -> Iterator[Candidate]:
    for c in t.of("date"):
        days = sorted({text(v) for v in c.values})
        for first, last in zip(days, days[2:], strict=False):
            if c.column.type == "date":
                query = ctx.render("SELECT * FROM {t} WHERE {c} BETWEEN {a} AND {b}",
                                   t=ctx.table(t.table), c=ctx.col(c.name),
                                   a=literal(first), b=literal(last))
            else:  # a timestamp: all of the last day counts. Its day is compared, so the
                # query has the shape of the date column's and copies the question's dates
                # (no day after to compute); an index on the column is not used by it
                query = ctx.render("SELECT * FROM {t} WHERE {c}::date BETWEEN {a} AND {b}",
                                   t=ctx.table(t.table), c=ctx.col(c.name),
                                   a=literal(first), b=literal(last))
            yield Candidate(query, _dated(t, c, "between", f"{first} and {last}"))


TEMPLATES: dict[str, Template] = {
    "select_columns": select_columns, "filter_eq": filter_eq, "filter_num": filter_num, "count_all": count_all,
    "count_filter": count_filter, "group_count": group_count, "aggregate": aggregate,
    "group_aggregate": group_aggregate, "top_n": top_n, "join_fk": join_fk,
    "join_filter": join_filter, "join_count": join_count, "date_compare": date_compare,
    "date_between": date_between,
}
