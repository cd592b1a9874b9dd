"""text-to-SQL model side, without a database: training options, the held-out split,
table selection, SQL normalization, beam choice (fake checks) and a tiny T5."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pgfleet.errors import ModelLoadError, PgfleetError
from pgfleet.text2sql.generate import NO_CANDIDATE, choose
from pgfleet.text2sql.inputs import build_input, relevant_tables
from pgfleet.text2sql.schema_text import Column, Schema, Table
from pgfleet.training.text2sql import OPTIONS, held_out, normalize_sql, validate_options

SHOP = Schema([
    Table("public", "customers", [Column("id", "integer"), Column("name", "text")]),
    Table("public", "orders", [Column("id", "integer"), Column("customer_id", "integer"),
                               Column("amount", "numeric")]),
    Table("public", "order_items", [Column("order_id", "integer"), Column("qty", "integer")]),
])


# ------------------------------------------------------------------------- options
def test_defaults_fill_every_option():
    options = validate_options({})
    assert set(options) == set(OPTIONS)
    assert options["base_model"] == "" and options["beams"] == 4
    ratio = validate_options({"warmup_ratio": 0})["warmup_ratio"]
    assert ratio == 0.0 and isinstance(ratio, float)  # an int where a float is expected


@pytest.mark.parametrize(("given", "message"), [
    ({"epoch": 3}, "unknown option(s) ['epoch']"),
    ({"epochs": "three"}, "option epochs must be int, not str ('three')"),
    ({"epochs": True}, "option epochs must be int, not bool"),
    ({"synth_if_empty": "yes"}, "option synth_if_empty must be bool, not str"),
    ({"base_model": None}, "option base_model must be str, not NoneType"),
    ({"epochs": 0}, "epochs must be at least 1, not 0"),
    ({"batch_size": -2}, "batch_size must be at least 1"),
    ({"learning_rate": 3.0}, "learning_rate must be between 0 and 1"),
    ({"eval_fraction": 1.0}, "eval_fraction must be between 0 and 1"),
    ({"max_examples": -1}, "max_examples must not be negative"),
    ({"d_model": 100}, "d_model must be a multiple of 8"),
    ({"name": "  "}, "name must not be empty"),
    ({"max_copies": 0}, "max_copies must be at least 1, not 0"),
    ({"mask_values": "no"}, "option mask_values must be bool, not str"),
    ({"tokenizer": "words"}, "tokenizer must be one of ['bpe', 'bytes'], not 'words'"),
    ({"base_model": "t5-small", "layers": 2}, "cannot change base_model"),
])
def test_bad_options_are_named_clearly(given, message):
    with pytest.raises(PgfleetError) as info:
        validate_options(given)
    assert str(info.value).startswith("train_text2sql: ")
    assert message in str(info.value)


# ------------------------------------------------------------------------- data
def test_the_held_out_split_is_stable_and_by_sql():
    queries = [f"SELECT * FROM orders WHERE id = {i}" for i in range(2000)]  # noqa: S608
    first = [held_out(q, 0.2) for q in queries]
    assert first == [held_out(q, 0.2) for q in queries]
    assert 0.15 < sum(first) / len(first) < 0.25
    # whitespace does not move an example to the other side
    assert all(held_out(q.replace(" ", "  "), 0.2) == h for q, h in zip(queries, first,
                                                                          strict=True))


def test_only_the_named_tables_go_into_the_input():
    assert relevant_tables("how many orders are there?", SHOP) == ["orders"]
    assert relevant_tables("quantities of order items", SHOP) == ["orders", "order_items"]
    assert relevant_tables("orders by customer", SHOP) == ["customers", "orders"]
    assert relevant_tables("what is the total?", SHOP) == ["customers", "orders", "order_items"]
    assert build_input("How many  ORDERS?", SHOP) == \
        "How many ORDERS? | orders : id , customer_id , amount"


def test_normalized_sql_ignores_spelling_not_meaning():
    assert normalize_sql("select  count(*) from orders where amount>5") == \
        normalize_sql("SELECT COUNT(*) FROM orders WHERE amount > 5")
    assert normalize_sql("SELECT id FROM orders") != normalize_sql("SELECT amount FROM orders")
    assert normalize_sql("not sql ((") == "not sql (("


# ------------------------------------------------------------------------- beam choice
@dataclass
class FakeVerdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    sql: str = ""


def fake_check(sql: str) -> FakeVerdict:
    if sql.upper().startswith("DELETE"):
        return FakeVerdict(False, ["Delete is not allowed."], sql)
    if "nope" in sql:
        return FakeVerdict(False, ['PostgreSQL rejected it: column "nope" does not exist'], sql)
    return FakeVerdict(True, [], sql.rstrip(";"))


def test_the_first_candidate_that_passes_is_chosen_and_the_others_explained():
    choice = choose(["DELETE FROM orders", "", "SELECT nope FROM orders", "DELETE FROM orders",
                     "SELECT count(*) FROM orders;", "SELECT 1"], fake_check)
    assert choice.ok and choice.beam == 4 and choice.sql == "SELECT count(*) FROM orders"
    assert [(r.beam, r.reasons) for r in choice.rejected] == [
        (0, ["Delete is not allowed."]), (1, ["The model produced no SQL."]),
        (2, ['PostgreSQL rejected it: column "nope" does not exist']),
        (3, ["The same SQL as beam 0."])]
    assert choice.why == ("beam 4 is the first that passed the guard; beams 0, 1, 2, 3 were "
                          "rejected")


def test_the_best_beam_is_taken_when_it_passes():
    checked: list[str] = []

    def check(sql):
        checked.append(sql)
        return fake_check(sql)

    choice = choose(["SELECT 1", "SELECT 2"], check)
    assert (choice.beam, choice.sql, choice.rejected, checked) == (0, "SELECT 1", [], ["SELECT 1"])
    assert choice.why == "beam 0 (the best-scored) passed the guard"


def test_no_sql_at_all_when_no_candidate_passes():
    choice = choose(["DELETE FROM orders", "SELECT nope FROM x"], fake_check)
    assert not choice.ok and choice.sql is None and choice.beam is None
    assert len(choice.rejected) == 2 and choice.why.startswith(NO_CANDIDATE)


# ------------------------------------------------------------------------- the model
TINY = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
        "num_heads": 2}


def test_a_tiny_t5_trains_saves_loads_and_returns_every_beam(tmp_path):
    import torch

    from pgfleet.text2sql import model

    seq = model.build(config=TINY, seed=1)
    assert seq.source == "scratch" and model.parameters(seq) < 50_000
    features = model.encode(seq, ["how many orders | orders : id"], ["SELECT count(*) FROM orders"])
    assert (features["labels"] >= 0).all()  # one example: no padding
    before = seq.model(**features).loss.item()
    optimizer = torch.optim.AdamW(seq.model.parameters(), lr=1e-2)
    for _ in range(5):
        seq.model(**features).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert seq.model(**features).loss.item() < before
    model.save(seq, tmp_path / "m")
    loaded = model.load(str(tmp_path / "m"))
    out = model.generate(loaded, ["a | t : c", "b"], beams=3, max_new_tokens=8)
    assert len(out) == 2 and all(len(beams) == 3 for beams in out)


def test_a_bpe_vocabulary_learned_from_examples_still_writes_any_text(tmp_path):
    from pgfleet.text2sql import model

    texts = ["how many orders | orders : id , amount", "SELECT count(*) FROM orders"] * 20
    tokenizer = model.bpe_tokenizer(texts, vocab_size=400)
    sql = "SELECT * FROM customers WHERE name = 'Zoë O''Neil 77' AND d < '2031-12-31'"
    ids = tokenizer(sql)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == sql
    assert len(tokenizer(texts[1])["input_ids"]) < len(texts[1]) / 3  # seen words: short
    seq = model.build(config=TINY, tokenizer=tokenizer)
    model.save(seq, tmp_path / "m")
    loaded = model.load(str(tmp_path / "m")).tokenizer
    assert loaded.decode(loaded(sql)["input_ids"], skip_special_tokens=True) == sql


def test_a_missing_base_model_says_so():
    from pgfleet.text2sql import model

    with pytest.raises(ModelLoadError, match="'/nonexistent': no such model directory"):
        model.build("/nonexistent")
