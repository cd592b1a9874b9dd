"""Text-to-SQL data without a database: example files, the schema text, the templates' words,
and the defog scoring rules (gold expansion, exact and subset matches, ordering)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from pgfleet.errors import PgfleetError
from pgfleet.text2sql.examples import parse_csv, parse_file, parse_jsonl
from pgfleet.text2sql.schema_text import Column, ForeignKey, Schema, Table, model_input, serialize
from pgfleet.text2sql.scoring import Table as Result
from pgfleet.text2sql.scoring import (
    canonical,
    compare,
    exact_match,
    expand_gold,
    order_matters,
    split_statements,
    subset_match,
)
from pgfleet.text2sql.synth import column_kind
from pgfleet.text2sql.synth_templates import article, plural, singular, words


# ------------------------------------------------------------------------- example files
def _problems(parsed) -> list[str]:
    return [str(p) for p in parsed.problems]


def test_csv_rows_are_checked_one_by_one_with_their_lines():
    text = ("question,sql,db_name\n"
            "how many orders?,SELECT count(*) FROM orders,\n"
            ",SELECT 1,\n"
            "no sql,   ,\n"
            "\"two\nlines\",SELECT 2,shop\n"
            "too many,SELECT 3,shop,extra\n"
            "last,SELECT 4,\n")
    parsed = parse_csv(text, "file:x.csv")
    assert _problems(parsed) == ["line 3: question is empty", "line 4: sql is empty",
                                 "line 7: more fields than the header"]
    assert [(e.line, e.question, e.db_name) for e in parsed.examples] == [
        (2, "how many orders?", None), (6, "two\nlines", "shop"), (8, "last", None)]
    assert all(e.source == "file:x.csv" and e.template is None for e in parsed.examples)


def test_a_csv_header_must_name_question_and_sql_and_nothing_else():
    assert _problems(parse_csv("question,query\nq,SELECT 1\n", "f")) == [
        "line 1: the header must name question and sql (and optionally db_name); "
        "missing ['sql']; unknown ['query']"]
    assert _problems(parse_csv("question,sql,notes\nq,SELECT 1,n\n", "f"))[0].endswith(
        "unknown ['notes']")


def test_jsonl_rows_are_checked_one_by_one_with_their_lines():
    text = "\n".join([
        '{"question": "q1", "sql": "SELECT 1"}',
        '{"question": "q2"}',
        "not json",
        "",
        '["a list"]',
        '{"question": "q6", "sql": "SELECT 6", "answer": 6}',
        '{"question": "q7", "sql": "SELECT 7", "db_name": ""}',
        '{"question": "q8", "sql": 8}',
        '{"question": " q9 ", "sql": "SELECT 9", "db_name": "shop"}',
    ])
    parsed = parse_jsonl(text, "file:x.jsonl")
    assert _problems(parsed) == [
        "line 2: sql is missing or not a string",
        "line 3: not valid JSON (Expecting value)",
        "line 5: expected a JSON object with question and sql",
        "line 6: unknown fields ['answer']; expected question, sql and optionally db_name",
        "line 7: db_name must be a non-empty string when given",
        "line 8: sql is missing or not a string",
    ]
    assert [(e.line, e.question, e.db_name) for e in parsed.examples] == [
        (1, "q1", None), (9, "q9", "shop")]


def test_only_csv_and_jsonl_files_are_read(tmp_path: Path):
    with pytest.raises(PgfleetError, match="expected a .csv or .jsonl file"):
        parse_file(tmp_path / "examples.txt")
    path = tmp_path / "examples.jsonl"
    path.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(PgfleetError, match="not UTF-8"):
        parse_file(path)


# ------------------------------------------------------------------------- schema text
def _shop() -> Schema:
    customers = Table("public", "customers", [Column("id", "integer", True),
                                              Column("name", "text")], ("id",))
    orders = Table("public", "orders", [Column("id", "integer", True),
                                        Column("customer_id", "integer"),
                                        Column("amount", "numeric(10,2)")], ("id",),
                   [ForeignKey(("customer_id",), "customers", ("id",))])
    users = Table("sales", "users", [Column("uid", "bigint", True)], ("uid",))
    return Schema([customers, orders, users])


def test_the_schema_is_written_picard_style():
    schema = _shop()
    assert serialize(schema) == ("customers : id , name | orders : id , customer_id , amount"
                                 " | sales.users : uid")
    assert serialize(schema, ["ORDERS", "sales.users", "nope"]) == (
        "orders : id , customer_id , amount | sales.users : uid")
    assert model_input("  How many\norders? ", schema, ["orders"]) == (
        "How many orders? | orders : id , customer_id , amount")
    assert model_input("q", schema, ["customers"], db_name="shop") == (
        "q | shop | customers : id , name")
    assert schema.table("users") is schema.tables[2] and schema.table("x") is None


# ------------------------------------------------------------------------- template words
def test_names_become_english_words():
    assert words("order_items") == "order items" and words("Signup__Date") == "signup date"
    assert [plural(w) for w in ("customer", "category", "box", "day", "orders")] == [
        "customers", "categories", "boxes", "days", "orders"]
    assert [singular(w) for w in ("customers", "categories", "boxes", "status", "class")] == [
        "customer", "category", "box", "status", "class"]
    assert article("order date") == "an" and article("price") == "a"


def test_column_kinds_come_from_the_type_name():
    kinds = {t: column_kind(t) for t in ("integer", "numeric(10,2)", "double precision",
                                         "character varying(20)", "text", "date",
                                         "timestamp with time zone", "boolean", "jsonb")}
    assert kinds == {"integer": "number", "numeric(10,2)": "number", "double precision": "number",
                     "character varying(20)": "text", "text": "text", "date": "date",
                     "timestamp with time zone": "date", "boolean": "bool", "jsonb": "other"}


# ------------------------------------------------------------------------- gold expansion
def test_gold_alternatives_are_split_on_semicolons_outside_quotes():
    assert split_statements("SELECT 1;SELECT ';' AS x; ;SELECT \"a;b\" FROM t;") == [
        "SELECT 1", "SELECT ';' AS x", 'SELECT "a;b" FROM t']


def test_braces_expand_to_every_non_empty_subset_in_order():
    # the README's examples: {a.x, a.y} is any non-empty subset, GROUP BY {} follows it
    gold = ("SELECT {author.name, author.aid}, sum(publication.citation_num) AS total "
            "FROM author JOIN writes ON author.aid = writes.aid GROUP BY {} ORDER BY total;"
            "SELECT a.aid FROM author a;")
    assert expand_gold(gold) == [
        "SELECT author.name, sum(publication.citation_num) AS total FROM author JOIN writes "
        "ON author.aid = writes.aid GROUP BY author.name ORDER BY total",
        "SELECT author.aid, sum(publication.citation_num) AS total FROM author JOIN writes "
        "ON author.aid = writes.aid GROUP BY author.aid ORDER BY total",
        "SELECT author.name, author.aid, sum(publication.citation_num) AS total FROM author "
        "JOIN writes ON author.aid = writes.aid GROUP BY author.name, author.aid ORDER BY total",
        "SELECT a.aid FROM author a",
    ]
    assert len(expand_gold("SELECT {a, b, c} FROM t")) == 7
    assert expand_gold("SELECT {x} FROM t;SELECT x FROM t") == ["SELECT x FROM t"]


def test_order_matters_for_the_order_by_category_or_when_the_question_asks():
    assert order_matters("order_by", "List cities")
    assert order_matters("group_by", "Count per year, sort by year")
    # the words themselves, as sql-eval matches them: "sorted" alone does not count
    assert not order_matters("group_by", "Count per year, sorted by year")
    assert order_matters("table_join", "Arrange them by date")
    assert not order_matters("group_by", "Which orders were placed by border towns?")


# ------------------------------------------------------------------------- comparing results
def test_exact_ignores_column_order_duplicates_and_row_order_but_not_values():
    gold = Result(["name", "n"], [("b", 2), ("a", 1), ("a", 1)])
    assert exact_match(gold, Result(["n", "name"], [(1, "a"), (2, "b")]), ordered=False)
    assert not exact_match(gold, Result(["n", "name"], [(1, "a"), (3, "b")]), ordered=False)
    assert not exact_match(gold, Result(["name"], [("a",), ("b",)]), ordered=False)


def test_numbers_compare_by_value_and_nulls_are_equal():
    gold = Result(["x", "y"], [(Decimal("2.50"), None), (Decimal("3"), 1.0)])
    generated = Result(["x", "y"], [(3, 1), (2.5000000000001, None)])
    assert exact_match(gold, generated, ordered=False)
    assert canonical(Decimal("3.00")) == 3 and canonical(1 / 3) == canonical(Decimal(1) / 3)
    assert canonical([1, {"b": 1, "a": 2}]) == (1, '{"a": 2, "b": 1}')


def test_row_order_counts_only_when_order_matters():
    gold = Result(["city"], [("Oslo",), ("Berlin",)])
    swapped = Result(["city"], [("Berlin",), ("Oslo",)])
    assert compare(gold, swapped, ordered=False) == "exact"
    assert compare(gold, swapped, ordered=True) is None
    assert compare(gold, Result(["city"], [("Oslo",), ("Berlin",)]), ordered=True) == "exact"


def test_subset_allows_extra_columns_not_extra_rows():
    gold = Result(["name", "total"], [("ann", 3), ("bob", 5)])
    extra_columns = Result(["id", "who", "sum"], [(2, "bob", 5), (1, "ann", 3)])
    assert compare(gold, extra_columns, ordered=False) == "subset"
    assert not subset_match(gold, Result(["who", "sum"], [("ann", 3), ("bob", 5), ("cy", 1)]),
                            ordered=False)
    # each gold column needs its own generated column, and the rows must then agree
    assert not subset_match(Result(["a", "b"], [(1, 1)]), Result(["x"], [(1,)]), ordered=False)
    crossed = Result(["who", "sum"], [("ann", 5), ("bob", 3)])
    assert not subset_match(gold, crossed, ordered=False)
    # ordered: the generated rows' order must be the gold's
    assert subset_match(gold, extra_columns, ordered=False)
    assert not subset_match(gold, extra_columns, ordered=True)


def test_an_empty_gold_result_never_counts_as_a_subset():
    empty = Result(["x"], [])
    assert not subset_match(empty, Result(["x", "y"], []), ordered=False)
    assert compare(empty, Result(["y"], []), ordered=False) == "exact"
    assert compare(Result(["x"], [(1,)]), Result(["?column?"], [(1,)]), ordered=False) == "exact"


def test_mixed_types_sort_without_errors():
    rows = [(None,), (dt.date(2024, 1, 2),), ("b",), (2,), (dt.datetime(2024, 1, 1),)]
    assert compare(Result(["v"], rows), Result(["v"], list(reversed(rows))),
                   ordered=False) == "exact"
