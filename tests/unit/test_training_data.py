"""Training pairs (parsing, validation, mining, splitting) and training options, without a
database or a model."""

from __future__ import annotations

import pytest

from pgfleet.errors import PgfleetError
from pgfleet.training import pairs
from pgfleet.training.embeddings import (
    DISTILL_OPTIONS,
    TRAIN_OPTIONS,
    keep_layers,
    retrieval_metrics,
    validate_options,
)


def test_jsonl_rows_are_validated_one_by_one(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([
        '{"text_a": "how do I vacuum?", "text_b": "VACUUM reclaims storage.", "score": 0.9}',
        '{"text_a": "no partner"}',
        'not json',
        '{"text_a": "a", "text_b": "b", "score": 1.5}',
        '{"text_a": "a", "text_b": "   "}',
        '["a", "b"]',
        '{"text_a": "a", "text_b": "b", "label": 1}',
        '{"text_a": "a", "text_b": "b", "score": "high"}',
        '',
        '{"text_a": "what is a tuple?", "text_b": "A tuple is an immutable sequence."}',
    ]), "utf-8")
    parsed = pairs.parse_file(path)
    assert [(p.text_a, p.score) for p in parsed.pairs] == [("how do I vacuum?", 0.9),
                                                           ("what is a tuple?", None)]
    problems = {p.line: p.message for p in parsed.problems}
    assert problems == {
        2: "text_b is missing or not a string",
        3: "not valid JSON (Expecting value)",
        4: "score 1.5 is outside [0, 1]",
        5: "text_b is empty",
        6: "expected a JSON object with text_a and text_b",
        7: "unknown fields ['label']; expected text_a, text_b and optionally score",
        8: "score 'high' is not a number",
    }
    assert all(p.source == "file:pairs.jsonl" for p in parsed.pairs)


def test_csv_needs_a_header_and_reports_bad_lines(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text('text_a,text_b,score\n"q, with comma",passage one,0.25\nq2,passage two,\n'
                    "q3,,0.5\nq4,p4,-1\n", "utf-8")
    parsed = pairs.parse_file(good)
    assert [(p.text_a, p.text_b, p.score) for p in parsed.pairs] == [
        ("q, with comma", "passage one", 0.25), ("q2", "passage two", None)]
    assert [str(p) for p in parsed.problems] == ["line 4: text_b is empty",
                                                 "line 5: score -1.0 is outside [0, 1]"]
    headless = tmp_path / "headless.csv"
    headless.write_text("question,answer\nq,a\n", "utf-8")
    assert "must name text_a and text_b" in str(pairs.parse_file(headless).problems[0])
    with pytest.raises(PgfleetError, match="expected a .csv, .tsv or .jsonl"):
        pairs.parse_file(tmp_path / "x.xlsx")


@pytest.mark.parametrize(("content", "metadata", "expected"), [
    ("# Vacuuming\n\nVACUUM reclaims storage occupied by dead tuples in every table.", None,
     ("heading", "Vacuuming", "VACUUM reclaims storage occupied by dead tuples in every table.")),
    ("Some body text.", {"title": "A title"}, ("title", "A title", "Some body text.")),
    ("How do I reset a sequence?\nUse ALTER SEQUENCE with RESTART WITH and the new value.",
     None, ("question", "How do I reset a sequence?",
            "Use ALTER SEQUENCE with RESTART WITH and the new value.")),
    ("Return the number of items in a container. " + "It counts every element once. " * 5,
     None, ("first_sentence", "Return the number of items in a container.",
            ("It counts every element once. " * 5).strip())),
    ("Too short to pair.", None, None),
    ("   ", None, None),
    ("# Heading only\n\ntoo short", None, None),
])
def test_miner_rules(content, metadata, expected):
    assert pairs.mine_one(content, metadata) == expected


def test_split_is_stable_and_keeps_a_query_on_one_side():
    items = [pairs.Pair(f"query {i % 40}", f"passage {i}") for i in range(400)]
    train, held = pairs.split(items, 0.1)
    again_train, again_held = pairs.split(list(reversed(items)), 0.1)
    assert {p.key for p in held} == {p.key for p in again_held}
    assert not {p.text_a for p in train} & {p.text_a for p in held}
    assert 0 < len(held) < len(items)
    with pytest.raises(PgfleetError, match="too few"):
        pairs.split(items[:6], 0.1)


def test_options_are_checked_with_clear_messages():
    assert validate_options("train_embeddings", {}, TRAIN_OPTIONS)["epochs"] == 1
    assert validate_options("train_embeddings", {"from_version": 3}, TRAIN_OPTIONS)[
        "from_version"] == "3"
    with pytest.raises(PgfleetError, match=r"unknown option\(s\) \['epoch'\]"):
        validate_options("train_embeddings", {"epoch": 2}, TRAIN_OPTIONS)
    with pytest.raises(PgfleetError, match="epochs must be int, not str"):
        validate_options("train_embeddings", {"epochs": "2"}, TRAIN_OPTIONS)
    with pytest.raises(PgfleetError, match="batch_size must be at least 2"):
        validate_options("train_embeddings", {"batch_size": 1}, TRAIN_OPTIONS)
    with pytest.raises(PgfleetError, match="learning_rate"):
        validate_options("distill_embeddings", {"learning_rate": 3}, DISTILL_OPTIONS)


def test_kept_layers_are_evenly_spaced():
    assert keep_layers(6, 3) == [0, 2, 5] or keep_layers(6, 3) == [0, 3, 5]
    assert keep_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert keep_layers(6, 2) == [0, 5]
    with pytest.raises(PgfleetError):
        keep_layers(6, 7)


def test_retrieval_metrics_rank_the_relevant_passage():
    import numpy as np

    held = [pairs.Pair("a", "A"), pairs.Pair("b", "B"), pairs.Pair("c", "C")]
    vectors = {"a": [1, 0, 0], "A": [1, 0, 0], "b": [0, 1, 0], "B": [0, 0.8, 0.6],
               "c": [0, 0, 1], "C": [0, 1, 0], "X": [0, 0.9, 0.1]}

    def encode(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    m = retrieval_metrics(encode, held, ["X"], k=2)
    # a -> A first; b -> C, X, B: B not in the top 2; c -> B, ... C last
    assert m["mrr@2"] == round((1 + 0 + 0) / 3, 4)
    assert m["queries"] == 3 and m["corpus"] == 4
