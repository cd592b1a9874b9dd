"""A/B tests between model versions: assignment and statistics. Pure: no database here.

Assignment: a version is chosen by traffic percent over 10,000 buckets. With a key (a user
or session id) the bucket is a hash of the model name and the key, so the same key always
gets the same version for a given split; without a key it is random.

Statistics: latency and quality per version, and bootstrap confidence intervals for the
difference between a candidate and the control, with a verdict in plain language.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = 10_000


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


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reciprocal_rank(results: Sequence[int], chosen: Sequence[int]) -> float:
    """1/rank of the first result that was chosen, 0 if none was."""
    for rank, doc_id in enumerate(results, start=1):
        if doc_id in chosen:
            return 1.0 / rank
    return 0.0


@dataclass
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap_ratio_of_means(control: Sequence[float], candidate: Sequence[float],
                             *, resamples: int = 2000, seed: int = 7) -> Interval:
    """How much lower the candidate's mean is than the control's, as a fraction of the
    control's (0.31 = 31% lower), with a 95% percentile bootstrap interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(control, float), np.asarray(candidate, float)
    estimate = 1 - b.mean() / a.mean()
    draws = 1 - (rng.choice(b, (resamples, len(b))).mean(axis=1)
                 / rng.choice(a, (resamples, len(a))).mean(axis=1))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_difference(control: Sequence[float], candidate: Sequence[float],
                         *, resamples: int = 2000, seed: int = 7) -> Interval:
    """candidate mean - control mean, with a 95% percentile bootstrap interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(control, float), np.asarray(candidate, float)
    draws = (rng.choice(b, (resamples, len(b))).mean(axis=1)
             - rng.choice(a, (resamples, len(a))).mean(axis=1))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(float(b.mean() - a.mean()), float(low), float(high))


def verdict(candidate: str, control: str, speed: Interval | None,
            quality: Interval | None) -> str:
    """"v2 is 31% faster than v1 (95% CI 27–35%); quality not different (...)"."""
    parts = []
    if speed is None:
        parts.append(f"not enough requests to compare {candidate} with {control}")
    elif speed.excludes_zero():
        word = "faster" if speed.estimate > 0 else "slower"
        lo, hi = sorted((abs(speed.low), abs(speed.high)))
        parts.append(f"{candidate} is {abs(speed.estimate):.0%} {word} than {control} "
                     f"(95% CI {lo:.0%}–{hi:.0%})")
    else:
        parts.append(f"{candidate} and {control} are not different in speed "
                     f"(95% CI {speed.low:+.0%} to {speed.high:+.0%})")
    if quality is None:
        parts.append("quality: no feedback yet")
    elif quality.excludes_zero():
        word = "better" if quality.estimate > 0 else "worse"
        parts.append(f"quality {word} (MRR {quality.estimate:+.3f}, 95% CI "
                     f"{quality.low:+.3f} to {quality.high:+.3f})")
    else:
        parts.append(f"quality not different (MRR {quality.estimate:+.3f}, 95% CI "
                     f"{quality.low:+.3f} to {quality.high:+.3f})")
    return "; ".join(parts)
