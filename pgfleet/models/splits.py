"""A/B splits: parsing one as typed, assigning a request to a version by it, and the
version that leads it (the most traffic, the oldest on a tie). Pure.

A version is chosen by traffic percent over 10,000 buckets. With a key (a user or session
id) the bucket is a hash of the model name and the key, so the same key always gets the
same version for a given split; without a key it is random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

BUCKETS = 10_000

T = TypeVar("T")


def parse_split(items: Sequence[str]) -> dict[str, int]:
    """``["v1=80", "v2=20", "v3=shadow"]`` -> ``{"v1": 80, "v2": 20, "v3": 0}``; the served
    percentages must sum to 100."""
    split: dict[str, int] = {}
    for item in items:
        version, sep, value = item.partition("=")
        if not sep or not version:
            raise ValueError(f"{item!r}: write VERSION=PERCENT or VERSION=shadow")
        if version in split:
            raise ValueError(f"{version} is given twice")
        if value == "shadow":
            split[version] = 0
            continue
        try:
            percent = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: the percent must be a whole number or 'shadow'") from None
        if not 0 <= percent <= 100:
            raise ValueError(f"{item!r}: the percent must be between 0 and 100")
        split[version] = percent
    total = sum(split.values())
    if total != 100:
        raise ValueError(f"the split sums to {total}%, it must be 100%")
    return split


def bucket(name: str, key: str) -> int:
    digest = hashlib.sha256(f"{name}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(name: str, split: Sequence[tuple[str, int]], key: str | None = None,
           rng: random.Random | None = None) -> str:
    """The version serving this request. ``split`` is ordered (version, percent) pairs."""
    serving = [(v, p) for v, p in split if p > 0]
    if not serving:
        raise ValueError(f"no version of {name} serves traffic")
    point = bucket(name, key) if key is not None else (rng or random).randrange(BUCKETS)
    edge = 0
    for version, percent in serving:
        edge += percent * BUCKETS // 100
        if point < edge:
            return version
    return serving[-1][0]


def leader(candidates: Sequence[T], traffic: Callable[[T], int]) -> T | None:
    """The candidate with the most traffic; on a tie the first, so the oldest for candidates
    in id order (the rule every choice among versions follows, in SQL too)."""
    return max(candidates, key=traffic, default=None)  # max keeps the first of equals
