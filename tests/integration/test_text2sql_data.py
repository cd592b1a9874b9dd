"""Text-to-SQL data on a real PostgreSQL: loading example files through the guard, schema
introspection, template synthesis, and the defog benchmark's scorer (gold against itself,
and a query that answers nothing)."""

from __future__ import annotations

import json
import time

import pytest

from pgfleet import db
from pgfleet.errors import ConfigurationError
from pgfleet.text2sql import check_sql, connect_reader
from pgfleet.text2sql.defog import (
    Question,
    default_dir,
    read_questions,
    reader_factory,
    run_benchmark,
    score,
    url_factory,
)
from pgfleet.text2sql.examples import Example, check_examples, load_file
from pgfleet.text2sql.schema_text import introspect, model_input, serialize
from pgfleet.text2sql.scoring import expand_gold
from pgfleet.text2sql.synth import synthesize
from pgfleet.text2sql.synth_templates import TEMPLATES
from pgfleet.text2sql.values import database_values
from tests.conftest import create_database, run_cli

pytestmark = pytest.mark.integration

SHOP = """
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, city text,
                        signup_date date NOT NULL);
CREATE TABLE products (id integer PRIMARY KEY, name text NOT NULL, category text NOT NULL,
                       price numeric(10,2) NOT NULL);
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers,
                     product_id integer REFERENCES products, order_date date NOT NULL,
                     created_at timestamptz NOT NULL, amount numeric(10,2), status text NOT NULL);
INSERT INTO customers
SELECT i, (ARRAY['Alice','Bob','Chloé','Dmitri','Eve','O''Brien'])[1 + i % 6] || ' ' || i,
       (ARRAY['Paris','Lyon','Berlin','Oslo'])[1 + i % 4], date '2023-01-01' + i * 7
FROM generate_series(1, 40) i;
INSERT INTO products
SELECT i, 'product ' || i, (ARRAY['books','games','kids'' toys'])[1 + i % 3], 5 + i * 37 % 100
FROM generate_series(1, 15) i;
INSERT INTO orders
SELECT i, 1 + i % 40, 1 + i % 15, date '2024-01-01' + i % 200,
       timestamptz '2024-01-01 10:00+00' + (i % 200) * interval '1 day 1 hour',
       CASE WHEN i % 11 = 0 THEN NULL ELSE i * 13 % 500 + 0.5 END,
       (ARRAY['new','paid','shipped','cancelled'])[1 + i % 4]
FROM generate_series(1, 300) i;
CREATE SCHEMA archive;
CREATE TABLE archive.old_orders (id integer PRIMARY KEY, total numeric);
GRANT USAGE ON SCHEMA archive TO pgfleet_reader;
GRANT SELECT ON customers, products, orders, archive.old_orders TO pgfleet_reader;
"""


@pytest.fixture(scope="module")
def shop_url(services):
    url = create_database(services, "pgfleet_t2s")
    with db.connect(url, autocommit=True) as conn:
        conn.execute(SHOP)
    return url


@pytest.fixture
def shop(shop_url):
    with db.connect(shop_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def reader(services, shop_url):
    """A session of the reader login on the shop: where guarded SQL runs."""
    with connect_reader(services.reader_url_for(shop_url)) as session:
        yield session


@pytest.fixture(scope="module")
def env(services, shop_url):
    return services.env(PGFLEET_DATABASE_URL=shop_url,
                        PGFLEET_READER_URL=services.reader_url_for(shop_url))


# ------------------------------------------------------------------------- loading files
def test_a_bad_sql_row_is_reported_by_line_and_nothing_loaded(env, shop, tmp_path):
    path = tmp_path / "examples.csv"
    path.write_text("question,sql\n"
                    "how many customers are there?,SELECT count(*) FROM customers\n"
                    "customers in Paris,\"SELECT * FROM customers WHERE town = 'Paris'\"\n"
                    ",SELECT 1\n"
                    "remove them,DELETE FROM orders\n"
                    "paid orders,SELECT * FROM orders WHERE status = 'paid'\n", "utf-8")
    result = run_cli("text2sql", "load", str(path), env=env)
    assert result.returncode == 1, result.stderr
    assert 'line 3: the SQL does not pass the guard: PostgreSQL rejected it: column "town" ' \
           "does not exist" in result.stderr
    assert "line 4: question is empty" in result.stderr
    assert "line 5: the SQL does not pass the guard: DELETE is not allowed" in result.stderr
    assert "3 bad row(s): nothing loaded" in result.stderr
    assert _stored(shop, "file:examples.csv") == []

    result = run_cli("text2sql", "load", str(path), "--skip-bad", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["valid"], report["bad"], report["loaded"]) == (2, 3, 2)
    assert _stored(shop, "file:examples.csv") == ["how many customers are there?", "paid orders"]
    again = json.loads(run_cli("text2sql", "load", str(path), "--skip-bad", "--json",
                               env=env).stdout)
    assert (again["loaded"], again["already_stored"]) == (0, 2)


@pytest.fixture(scope="module")
def other_url(services):
    return create_database(services, "pgfleet_t2s_other")


def test_examples_for_another_schema_or_database_are_checked_there(reader, other_url):
    examples = [Example("old totals", "SELECT total FROM old_orders", "archive", line=1),
                Example("old totals", "SELECT total FROM old_orders", None, line=2),
                Example("q", "SELECT 1", "no_such_place", line=3),
                Example("docs", "SELECT count(*) FROM docs", "pgfleet_t2s_other", line=4)]
    problems = [str(p) for p in check_examples(reader, examples)]
    assert problems[0].startswith("line 2: the SQL does not pass the guard: PostgreSQL "
                                  'rejected it: relation "old_orders" does not exist')
    assert problems[1] == ("line 3: db_name 'no_such_place' is neither a schema of this "
                           "database nor a database on this server")
    assert len(problems) == 2
    assert reader.conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'


def test_guarded_work_refuses_the_fleets_connection_and_another_database(
        services, shop, reader, other_url, tmp_path):
    from pgfleet.text2sql.inputs import relevant_tables

    schema = introspect(shop)
    question = "customers in paris"
    found = database_values(reader, schema, relevant_tables(question, schema), question)
    assert found["paris"].text == "Paris" and found["paris"].columns == ("customers.city",)
    with pytest.raises(ConfigurationError, match="connect_reader"):
        database_values(shop, schema, ["customers"], question)  # the fleet's connection
    with pytest.raises(ConfigurationError, match="connect_reader"):
        check_examples(shop, [Example("q", "SELECT 1", None, line=1)])
    path = tmp_path / "one.csv"
    path.write_text("question,sql\nhow many?,SELECT count(*) FROM customers\n", "utf-8")
    with connect_reader(services.reader_url_for(other_url)) as elsewhere:
        with pytest.raises(ConfigurationError, match="pgfleet_t2s_other"):
            load_file(shop, path, reader=elsewhere)
        with pytest.raises(ConfigurationError, match="pgfleet_t2s_other"):
            synthesize(shop, elsewhere, seed=1, per_template=1)


def _stored(conn, source: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT question FROM text2sql_examples WHERE source = %s "
                                       "ORDER BY question", (source,)).fetchall()]


# ------------------------------------------------------------------------- schema text
def test_the_live_schema_leaves_out_pgfleets_own_tables(shop):
    schema = introspect(shop)
    assert [t.name for t in schema.tables] == ["customers", "docs", "orders", "products"]
    orders = schema.table("orders")
    assert orders.primary_key == ("id",)
    assert [(fk.columns, fk.ref_table) for fk in orders.foreign_keys] == [
        (("customer_id",), "customers"), (("product_id",), "products")]
    assert orders.column("amount").type == "numeric(10,2)"
    assert serialize(introspect(shop, ["public", "archive"]), ["orders", "old_orders"]) == (
        "orders : id , customer_id , product_id , order_date , created_at , amount , status"
        " | archive.old_orders : id , total")
    assert model_input("How many?", schema, ["customers"]) == (
        "How many? | customers : id , name , city , signup_date")


# ------------------------------------------------------------------------- synthesis
def test_synth_covers_every_template_with_sql_that_passes_the_guard(shop, reader):
    result = synthesize(shop, reader, seed=7)
    assert set(result.counts) == set(TEMPLATES), result.reasons
    assert not result.dropped, result.reasons
    assert 300 <= len(result.examples) <= 3000
    for sql_text in {e.sql for e in result.examples}:
        verdict = check_sql(sql_text, reader)
        assert verdict.ok, (sql_text, verdict.reasons)
    assert all(e.source == f"synth:{e.template}" for e in result.examples)
    # a value with a quote in it is written as an SQL literal
    assert any("'kids'' toys'" in e.sql for e in result.examples)
    joins = {e.sql for e in result.examples if e.template == "join_fk"}
    assert "SELECT orders.*, customers.name FROM orders JOIN customers ON orders.customer_id = " \
           "customers.id" in joins


def test_synth_is_deterministic_for_a_seed(shop, reader):
    first = synthesize(shop, reader, seed=3, per_template=20)
    second = synthesize(shop, reader, seed=3, per_template=20)
    other = synthesize(shop, reader, seed=4, per_template=20)
    assert [(e.question, e.sql) for e in first.examples] == \
        [(e.question, e.sql) for e in second.examples]
    assert [(e.question, e.sql) for e in first.examples] != \
        [(e.question, e.sql) for e in other.examples]
    assert max(first.counts.values()) <= 20 * 2  # two phrasings per SQL


def test_synth_command_stores_each_example_once(env, shop):
    dry = json.loads(run_cli("text2sql", "synth", "--dry-run", "--json", "--per-template", "5",
                             env=env).stdout)
    assert dry["stored"] == 0 and dry["examples"] == sum(dry["by_template"].values()) > 0
    result = run_cli("text2sql", "synth", "--json", "--per-template", "5", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stored"] == dry["examples"]
    again = json.loads(run_cli("text2sql", "synth", "--json", "--per-template", "5",
                               env=env).stdout)
    assert again["stored"] == 0
    stored = shop.execute("SELECT count(*), count(DISTINCT template) FROM text2sql_examples "
                          "WHERE source LIKE 'synth:%'").fetchone()
    assert stored == (dry["examples"], len(TEMPLATES))


# ------------------------------------------------------------------------- the benchmark
@pytest.mark.skipif(not (default_dir() / "questions_postgres.csv").is_file(),
                    reason="the defog benchmark files are not in this checkout")
def test_defog_gold_scores_everything_and_select_1_almost_nothing(services):
    path = default_dir() / "questions_postgres.csv"
    gold = {(q.prompt, q.db_name): expand_gold(q.query)[0] for q in read_questions(path)}
    cache: dict = {}
    started = time.monotonic()
    report = run_benchmark(services.database_url, lambda q, d, s: gold[(q, d)],
                           reader_url=services.reader_url, gold_cache=cache)
    assert (report.correct, report.scored, report.excluded) == (210, 210, [])
    assert set(report.by_category) == {"date_functions", "group_by", "order_by", "ratio",
                                       "table_join", "instruct"}
    assert len(report.by_database) == 11

    seen: list[str] = []

    def select_1(question: str, db_name: str, schema_text: str) -> str:
        seen.append(schema_text)
        return "SELECT 1"

    report = run_benchmark(services.database_url, select_1, reader_url=services.reader_url,
                           gold_cache=cache)
    assert report.scored == 210 and report.correct <= 10, [r.question for r in report.rows
                                                          if r.correct]
    assert any(s.startswith("consumer_div.") for s in seen)  # ewallet's schema is named
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not (default_dir() / "databases").is_dir(),
                    reason="the defog benchmark files are not in this checkout")
def test_a_question_whose_gold_cannot_run_is_excluded_with_the_reason(services):
    questions = [
        Question(1, "How many restaurants are there?", "SELECT count(*) FROM restaurant",
                 "restaurants", "group_by"),
        Question(2, "Broken gold", "SELECT nope FROM restaurant;SELECT * FROM missing",
                 "restaurants", "group_by"),
        Question(3, "Predict fails", "SELECT count(*) FROM restaurant", "restaurants", "ratio",
                 "Count them all"),
    ]

    def predict(question: str, db_name: str, schema_text: str) -> str:
        if question.startswith("Predict fails"):
            assert question.endswith("\nInstructions: Count them all")
            raise RuntimeError("model fell over")
        return "SELECT count(*) AS n FROM restaurant"

    report = score(url_factory(services.database_url), predict,
                   reader_factory=reader_factory(services.reader_url), questions=questions,
                   databases_dir=default_dir() / "databases")
    assert (report.scored, report.correct) == (2, 1)
    assert [e["number"] for e in report.excluded] == [2]
    assert 'column "nope" does not exist' in report.excluded[0]["reason"]
    assert 'relation "missing" does not exist' in report.excluded[0]["reason"]
    failed = report.rows[1]
    assert not failed.correct and failed.error == "predict failed: RuntimeError: model fell over"
    assert report.by_category == {"group_by": {"correct": 1, "total": 1, "accuracy": 1.0},
                                  "ratio": {"correct": 0, "total": 1, "accuracy": 0.0}}
    assert json.dumps(report.as_dict())
