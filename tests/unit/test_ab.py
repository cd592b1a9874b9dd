import random

import pytest

from pgfleet.models.splits import assign, bucket, parse_split
from pgfleet.models.stats import (
    bootstrap_difference,
    bootstrap_ratio_of_means,
    percentile,
    reciprocal_rank,
    verdict,
)


def test_ten_thousand_keyed_assignments_follow_an_80_20_split():
    split = [("v1", 80), ("v2", 20)]
    counts = {"v1": 0, "v2": 0}
    for user in range(10_000):
        counts[assign("minilm", split, key=f"user-{user}")] += 1
    assert abs(counts["v2"] / 10_000 - 0.20) <= 0.02, counts


def test_the_same_key_always_gets_the_same_version():
    split = [("v1", 50), ("v2", 50)]
    for user in range(200):
        first = assign("minilm", split, key=str(user))
        assert all(assign("minilm", split, key=str(user)) == first for _ in range(5))
    assert bucket("a", "k") != bucket("b", "k") or bucket("a", "k2") != bucket("b", "k2")


def test_unkeyed_assignment_is_random_and_shadows_get_nothing():
    rng = random.Random(3)
    picks = [assign("m", [("v1", 50), ("v2", 50), ("v3", 0)], rng=rng) for _ in range(2000)]
    assert "v3" not in picks and 0.45 < picks.count("v1") / 2000 < 0.55
    with pytest.raises(ValueError, match="no version"):
        assign("m", [("v3", 0)])


@pytest.mark.parametrize("items, error", [
    (["v1=80", "v2=30"], "sums to 110%"),
    (["v1"], "VERSION=PERCENT"),
    (["v1=abc"], "whole number"),
    (["v1=101"], "between 0 and 100"),
    (["v1=50", "v1=50"], "twice"),
])
def test_parse_split_refuses_bad_input(items, error):
    with pytest.raises(ValueError, match=error):
        parse_split(items)


def test_parse_split():
    assert parse_split(["v1=80", "v2=20", "v3=shadow"]) == {"v1": 80, "v2": 20, "v3": 0}


def test_percentile_matches_a_hand_computation():
    values = [10, 20, 30, 40, 50]
    assert percentile(values, 50) == 30
    assert percentile(values, 95) == pytest.approx(48.0)  # 40 + 0.8 * 10
    assert percentile([7], 95) == 7


def test_reciprocal_rank():
    assert reciprocal_rank([5, 6, 7], [7]) == pytest.approx(1 / 3)
    assert reciprocal_rank([5, 6, 7], [9]) == 0.0


def test_bootstrap_intervals_and_verdict():
    rng = random.Random(1)
    slow = [100 + rng.gauss(0, 5) for _ in range(300)]
    fast = [70 + rng.gauss(0, 5) for _ in range(300)]
    speed = bootstrap_ratio_of_means(slow, fast)
    assert speed.low < speed.estimate < speed.high and speed.excludes_zero()
    assert speed.estimate == pytest.approx(0.30, abs=0.03)
    same = bootstrap_difference([0.5, 1.0, 0.0, 1.0] * 25, [1.0, 0.5, 0.0, 1.0] * 25)
    assert not same.excludes_zero()
    text = verdict("v2", "v1", speed, same)
    assert text.startswith("v2 is 31% faster than v1 (95% CI 30%–31%)"), text
    assert "quality not different" in text


def test_a_blocking_session_is_described_by_pid_state_age_and_query():
    import datetime as dt

    from pgfleet.db.vector_index import describe

    since = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    holders = [{"virtualtransaction": "7/42", "pid": 4242, "state": "idle in transaction",
                "xact_start": since, "xact_age_s": 61.4, "application_name": "psql",
                "query": "INSERT INTO docs\n  (content) VALUES ('x')"},
               {"virtualtransaction": "-1/901", "pid": None, "state": None, "xact_start": None,
                "xact_age_s": None, "application_name": None, "query": None}]
    text = describe(holders)
    assert text == ("pid 4242 (idle in transaction since 2026-01-02 03:04:05+0000 (61 s), "
                    "application 'psql', last query: INSERT INTO docs (content) VALUES ('x')); "
                    "a prepared transaction (-1/901)")
    assert describe(holders * 4, limit=2).endswith("and 6 more")
