import random

import numpy as np
import pytest

from pgfleet.embedding.batching import (
    MAX_IDS_PER_MESSAGE,
    backoff_s,
    chunked,
    plan_batch,
    validate_embed_args,
)
from pgfleet.errors import InvalidTaskArguments


def test_valid_args_by_position_and_by_name():
    assert validate_embed_args((1, [3, 4])) == (1, [3, 4])
    assert validate_embed_args((), {"version_id": 2, "doc_ids": (5,)}) == (2, [5])


@pytest.mark.parametrize("args, kwargs, fragment", [
    ((), {}, "expected (version_id, doc_ids)"),
    ((1,), {}, "expected (version_id, doc_ids)"),
    (("1", [1]), {}, "version_id must be a positive integer"),
    ((True, [1]), {}, "version_id must be a positive integer"),
    ((0, [1]), {}, "version_id must be a positive integer"),
    ((1, "1,2"), {}, "doc_ids must be a list"),
    ((1, [1, "x"]), {}, "positive 64-bit integers"),
    ((1, [-4]), {}, "positive 64-bit integers"),
    ((1, [2**63]), {}, "positive 64-bit integers"),
    ((1, [1.5]), {}, "positive 64-bit integers"),
    ((), {"version_id": 1, "doc_ids": [1], "extra": 1}, "unknown arguments"),
    ((1, [1]), {"version_id": 1}, "either by position or by name"),
])
def test_invalid_args_say_what_is_wrong(args, kwargs, fragment):
    with pytest.raises(InvalidTaskArguments, match=None) as info:
        validate_embed_args(args, kwargs)
    assert fragment in str(info.value)


def test_too_many_ids_in_one_message_is_refused():
    with pytest.raises(InvalidTaskArguments, match="at most"):
        validate_embed_args((1, list(range(1, MAX_IDS_PER_MESSAGE + 2))))


def test_chunked():
    assert list(chunked([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunked([], 3)) == []


def _row(doc_id, digest, content=None, cached=None, blank=False, cut=False):
    return {"doc_id": doc_id, "hash": digest, "content": content, "cached": cached,
            "blank": blank, "cut": cut}


def test_plan_batch_splits_hits_misses_and_empties():
    vec = np.ones(3, dtype=np.float32)
    plan = plan_batch([
        _row(1, b"a", "a much longer text here", cut=True),
        _row(2, b"b", "short"),
        _row(3, b"a", "a much longer text here"),  # same content as doc 1: encoded once
        _row(4, b"c", cached=vec),
        _row(5, b"c", cached=vec),
        _row(6, b"e", "", blank=True),  # the database says which docs are blank
        _row(7, b"f", "", blank=True),
        _row(8, b"e", cached=vec, blank=True),  # blank, whatever the cache holds
        _row(9, b"g", "\u00a0 not blank to the database, so not to the plan"),
    ])
    assert plan.texts[:2] == ["short", "a much longer text here"]  # shortest first
    assert plan.text_hashes == [b"b", b"a", b"g"]
    assert plan.docs_by_hash == {b"a": [1, 3], b"b": [2], b"g": [9]}
    assert set(plan.hits) == {4, 5}
    assert plan.hit_counts == {b"c": 2}
    assert plan.empty == [(6, b"e"), (7, b"f"), (8, b"e")]
    assert plan.cut == {b"a"}
    assert plan.batch_size == 9


def test_backoff_is_capped_exponential_with_jitter():
    rng = random.Random(7)
    values = [backoff_s(n, base_s=1, max_s=10, rng=rng) for n in range(1, 10)]
    for attempt, value in enumerate(values, start=1):
        ceiling = min(10, 2 ** (attempt - 1))
        assert ceiling / 2 <= value <= ceiling
    assert max(values) <= 10
    with pytest.raises(ValueError):
        backoff_s(0, base_s=1, max_s=2)


def test_token_budget_groups_sort_by_length_and_respect_the_budget():
    from pgfleet.embedding.batching import token_budget_groups

    lengths = [100, 10, 10, 50, 300, 10, 60]
    groups = token_budget_groups(lengths, 200)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) * longest <= 200 or len(group) == 1
    assert groups[-1] == [4]  # longer than the budget: alone
    assert token_budget_groups([], 100) == []


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.lists(st.integers(min_value=0, max_value=600), max_size=80),
       st.integers(min_value=1, max_value=5000))
def test_token_budget_groups_cover_every_index_once(lengths, budget):
    from pgfleet.embedding.batching import token_budget_groups

    groups = token_budget_groups(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) == 1 or len(group) * max(max(lengths[i] for i in group), 1) <= budget


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(),
                          st.lists(st.integers(), max_size=3)), max_size=4))
def test_validation_accepts_or_refuses_clearly_never_crashes(args):
    try:
        version_id, doc_ids = validate_embed_args(args)
    except InvalidTaskArguments as exc:
        assert str(exc)
    else:
        assert isinstance(version_id, int) and all(isinstance(d, int) for d in doc_ids)


def test_quantization_choice_follows_the_cpu():
    from pgfleet.training.quantize import quantization_choice

    vnni = quantization_choice({"avx2", "avx512f", "avx512_vnni"})
    assert vnni["per_channel"] and not vnni["reduce_range"] and vnni["weight_type"] == "QInt8"
    assert quantization_choice({"avx2"})["reduce_range"] is True


def test_fidelity_of_identical_and_perturbed_vectors():
    from pgfleet.training.measure import fidelity

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 8)).astype(np.float32)
    same = fidelity(a, a.copy())
    assert same["cosine_mean"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    noisy = fidelity(a, a + rng.standard_normal(a.shape).astype(np.float32))
    assert noisy["cosine_mean"] < 0.9 and noisy["top10_overlap"] < 1.0


def test_the_content_cut_is_the_window_times_the_characters_a_token_covers():
    from pgfleet.embedding.batching import MAX_CHARS_PER_TOKEN, max_chars

    assert MAX_CHARS_PER_TOKEN == 100
    assert max_chars(256) == 25_600
    assert max_chars(None) == max_chars(512)  # a version whose window is not recorded
