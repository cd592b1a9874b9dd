"""Values masked in questions and put back into SQL, the distillation loss and the student's
shape, without a database."""

from __future__ import annotations

import pytest

from pgfleet.errors import PgfleetError
from pgfleet.text2sql.generate import choose
from pgfleet.text2sql.values import (
    UnknownPlaceholder,
    Value,
    mask,
    mask_sql,
    spans,
    unmask_sql,
)

KNOWN = {"paid": Value("paid", "text", ("orders.status",)),
         "chloé 20": Value("Chloé 20", "text", ("customers.name",)),
         "kids' toys": Value("kids' toys", "text", ("products.category",)),
         "paris": Value("Paris", "text", ("customers.city", "stores.city"))}


def test_spans_are_longest_first_without_edge_punctuation():
    found = spans("orders of Chloé 20?")
    assert found[0][2] == "orders of Chloé 20"
    assert (10, 18, "Chloé 20") in found
    assert "20" in [text for _, _, text in found]


@pytest.mark.parametrize(("question", "masked", "values"), [
    ("how many orders are paid?", "how many orders are @0?", ["paid"]),
    # the database's value wins over the number inside it, and its spelling is kept
    ("orders of chloé 20 after 2024-03-01", "orders of @0 after @1", ["Chloé 20", "2024-03-01"]),
    ("top 3 products in kids' toys", "top @0 products in @1", ["3", "kids' toys"]),
    ("customers in PARIS named 'O''Brien'", "customers in @0 named @1", ["Paris", "O'Brien"]),
    ('customers named "O\'Brien"', "customers named @0", ["O'Brien"]),
    ("amount between 5 and 5.50 or 5", "amount between @0 and @1 or @0", ["5", "5.50"]),
    ("orders created on 2024-01-02 10:30", "orders created on @0", ["2024-01-02 10:30"]),
    ("no values here", "no values here", []),
    ("product-12 and v2 and x3y are words, -4 is not", "product-12 and v2 and x3y are words, "
     "@0 is not", ["-4"]),
])
def test_mask_finds_database_values_quoted_text_dates_and_numbers(question, masked, values):
    result = mask(question, KNOWN)
    assert result.question == masked
    assert [v.text for v in result.values] == values


def test_hints_name_where_the_database_holds_each_value():
    result = mask("paid orders of customers in paris over 10", KNOWN)
    assert result.hints == "@0 : orders.status | @1 : customers.city , stores.city"


def test_without_known_values_only_the_pattern_values_are_masked():
    assert mask("paid orders over 10").question == "paid orders over @0"


@pytest.mark.parametrize(("sql", "masked"), [
    ("SELECT * FROM customers WHERE name = 'Chloé 20' AND signup_date > '2024-03-01'",
     "SELECT * FROM customers WHERE name = '@0' AND signup_date > '@1'"),
    ("SELECT * FROM products WHERE price > 86.00 LIMIT 3",
     "SELECT * FROM products WHERE price > @2 LIMIT @3"),
    # a literal the question does not hold, and an identifier that looks like one, stay
    ("SELECT \"x 86\" FROM t WHERE a = 'other' LIMIT 1", "SELECT \"x 86\" FROM t WHERE "
     "a = 'other' LIMIT 1"),
    ("SELECT * FROM p WHERE c = 'kids'' toys'", "SELECT * FROM p WHERE c = '@4'"),
])
def test_mask_sql_replaces_the_question_values_keeping_quotes(sql, masked):
    values = [Value("Chloé 20", "text"), Value("2024-03-01", "date"), Value("86", "number"),
              Value("3", "number"), Value("kids' toys", "text")]
    assert mask_sql(sql, values) == masked


def test_unmask_puts_values_back_as_literals_and_round_trips():
    values = [Value("O'Brien", "text"), Value("79.50", "number"), Value("2024-01-01", "date")]
    sql = "SELECT * FROM t WHERE name = 'O''Brien' AND amount < 79.50 AND d > '2024-01-01'"
    masked = mask_sql(sql, values)
    assert masked == "SELECT * FROM t WHERE name = '@0' AND amount < @1 AND d > '@2'"
    assert unmask_sql(masked, values) == sql
    # a bare placeholder of a text value is still written as a quoted literal
    assert unmask_sql("SELECT @0, @1", values) == "SELECT 'O''Brien', 79.50"


HOSTILE_VALUES = ["x' OR '1'='1", "'; DROP TABLE docs; --", "a\\' OR true --", "%' || pg_sleep(1) || '",
                  "$$; DELETE FROM docs; $$", "it''s", "\\", "*/ SELECT 1 /*"]


def _literals(sql: str) -> list[str]:
    """The string literals of ``sql`` as PostgreSQL reads them (standard strings)."""
    import sqlglot

    return [t.text for t in sqlglot.tokenize(sql, read="postgres")
            if t.token_type.name in ("STRING", "HEREDOC_STRING")]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_value_inside_a_literal_stays_inside_it(value):
    values = [Value(value, "text")]
    sql = unmask_sql("SELECT * FROM t WHERE name LIKE '%@0%' AND a = '@0' AND b = @0", values)
    assert _literals(sql) == [f"%{value}%", value, value], sql
    # three literals and nothing else: no value became SQL
    import sqlglot

    kinds = [t.token_type.name for t in sqlglot.tokenize(sql, read="postgres")]
    assert kinds == ["SELECT", "STAR", "FROM", "VAR", "WHERE", "NAME", "LIKE", "STRING", "AND",
                     "VAR", "EQ", "STRING", "AND", "VAR", "EQ", "STRING"], sql
    from pgfleet.text2sql import check_sql

    verdict = check_sql(sql)
    assert verdict.ok, verdict.reasons


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_value_inside_an_escape_string_or_a_dollar_quote_stays_inside_it(value):
    values = [Value(value, "text")]
    escaped = unmask_sql("SELECT E'@0\\n' AS v", values)
    import sqlglot

    tokens = sqlglot.tokenize(escaped, read="postgres")
    assert [t.token_type.name for t in tokens] == ["SELECT", "BYTE_STRING", "ALIAS", "VAR"]
    if "$$" in value:
        with pytest.raises(ValueError, match="dollar-quoted"):
            unmask_sql("SELECT $$@0$$", values)
    else:
        assert _literals(unmask_sql("SELECT $$@0$$", values)) == [value]


def test_values_are_literals_outside_quotes_and_never_join_a_word():
    values = [Value("x' OR '1'='1", "text"), Value("-4", "number"), Value("2024-03-01", "date"),
              Value("79.50", "number"), Value("1; DELETE FROM docs", "number")]
    sql = unmask_sql("SELECT @0, a -@1, @2, @3, @4, e@0, u&@0 FROM t", values)
    assert sql == ("SELECT 'x'' OR ''1''=''1', a -(-4), '2024-03-01', 79.50, "
                   "'1; DELETE FROM docs', e 'x'' OR ''1''=''1', u& 'x'' OR ''1''=''1' FROM t")
    # placeholders in identifiers and comments are not values
    assert unmask_sql('SELECT "@0" FROM t -- @5\n/* @6 */', values) == \
        'SELECT "@0" FROM t -- @5\n/* @6 */'


def test_dates_and_numbers_inside_quotes_keep_their_text():
    values = [Value("2024-03-01", "date"), Value("3", "number")]
    assert unmask_sql("SELECT * FROM t WHERE d > '@0' AND d < '@0 10:00' LIMIT @1", values) == \
        "SELECT * FROM t WHERE d > '2024-03-01' AND d < '2024-03-01 10:00' LIMIT 3"


def test_a_placeholder_the_question_lacks_rejects_the_beam():
    with pytest.raises(UnknownPlaceholder, match="uses value @2, but the question has 1"):
        unmask_sql("SELECT * FROM t WHERE a = '@2'", [Value("x", "text")])
    with pytest.raises(UnknownPlaceholder, match="has no value"):
        unmask_sql("SELECT @0", [])

    class Verdict:
        ok, reasons, sql = True, [], None

    choice = choose(["SELECT '@3'", "SELECT '@0'"], lambda sql: Verdict(),
                    lambda text: unmask_sql(text, [Value("x", "text")]))
    assert choice.beam == 1 and choice.sql == "SELECT 'x'"
    assert choice.rejected[0].reasons == ["The SQL uses value @3, but the question has 1 "
                                          "value(s)."]


# ------------------------------------------------------------------------- distillation
def test_the_distillation_loss_is_the_original_formula():
    torch = pytest.importorskip("torch")
    from pgfleet.training.text2sql import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    ce = torch.tensor(1.5)
    got = distillation_loss(student, teacher, labels, ce, alpha=0.3, temperature=2.0)
    keep = labels != -100
    p_t = torch.softmax(teacher[keep] / 2, -1)
    log_p_s = torch.log_softmax(student[keep] / 2, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert torch.allclose(got, 0.3 * kl * 4 + 0.7 * ce, atol=1e-6)
    # a student equal to its teacher has no KL term left
    same = distillation_loss(teacher, teacher, labels, ce, alpha=1.0, temperature=3.0)
    assert abs(float(same)) < 1e-6


def test_the_student_is_half_the_teacher_unless_sized():
    from transformers import T5Config

    from pgfleet.training.text2sql_distill import student_config

    teacher = T5Config(d_model=256, num_layers=4, num_heads=4, d_ff=768)
    config = student_config(teacher)
    assert (config["d_model"], config["num_layers"], config["num_decoder_layers"]) == (128, 2, 2)
    assert config["d_kv"] * config["num_heads"] == 128
    sized = student_config(teacher, d_model=48, layers=1)
    assert sized["d_model"] == 48 and sized["num_heads"] in (4, 3, 2, 1)
    assert 48 % sized["num_heads"] == 0


@pytest.mark.parametrize(("given", "message"), [
    ({}, "from_version is required"),
    ({"from_version": "v1", "alpha": 1.5}, "alpha must be between 0 and 1"),
    ({"from_version": "v1", "temperature": 0}, "temperature must be positive"),
    ({"from_version": "v1", "d_model": 20}, "d_model must be a multiple of 8"),
    ({"from_version": "v1", "student": "x"}, "unknown option(s) ['student']"),
    ({"from_version": 1}, "option from_version must be str, not int"),
])
def test_bad_distillation_options_are_named(given, message):
    from pgfleet.training.text2sql_distill import validate_options

    with pytest.raises(PgfleetError, match="^distill_text2sql: ") as info:
        validate_options(given)
    assert message in str(info.value)


# ------------------------------------------------------------------------- column linking
def test_the_columns_a_question_names_are_listed_in_its_order():
    from pgfleet.text2sql.inputs import mentioned_columns, prepare
    from pgfleet.text2sql.schema_text import Column, Schema, Table

    schema = Schema([
        Table("public", "customers", [Column("id", "integer"), Column("city", "text"),
                                      Column("signup_date", "date")]),
        Table("public", "orders", [Column("id", "integer"), Column("amount", "numeric")]),
    ])
    assert mentioned_columns("show the signup date and city of every customer", schema,
                             ["customers"]) == "* customers.signup_date , customers.city"
    assert mentioned_columns("how many customers?", schema, ["customers"]) == ""
    # only the tables the question is about
    assert mentioned_columns("city and amount", schema, ["orders"]) == "* orders.amount"
    prepared = prepare("customers in city @x with signup_date after 2024-01-01", schema,
                       link_columns=True)
    assert prepared.input == ("customers in city @x with signup_date after @0 | "
                              "* customers.city , customers.signup_date | "
                              "customers : id , city , signup_date")
    assert prepare("customers", schema).input == "customers | customers : id , city , signup_date"


def test_a_saved_model_remembers_how_it_reads(tmp_path):
    pytest.importorskip("torch")
    from pgfleet.text2sql import model

    seq = model.build(config={"d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1,
                              "num_decoder_layers": 1, "num_heads": 4})
    seq.mask_values, seq.link_columns = True, True
    model.save(seq, tmp_path / "m")
    loaded = model.load(str(tmp_path / "m"))
    assert (loaded.mask_values, loaded.link_columns) == (True, True)
    (tmp_path / "m" / model.SETTINGS_FILE).unlink()  # a model saved before these existed
    assert (model.load(str(tmp_path / "m")).mask_values,) == (False,)
