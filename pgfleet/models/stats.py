"""The statistics of the A/B report and of the fleet's status. Pure: no database here.

Coverage, latency percentiles and quality (reciprocal rank) per version, bootstrap
confidence intervals for the difference between a candidate and the control, with a
verdict in plain language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def coverage(embedded: int, docs: int) -> float | None:
    """The share of docs with a vector of a version, at most 1 (a vector counted while its
    doc was being deleted); None when there are no docs. Rounding is the reader's."""
    return min(embedded, docs) / docs if docs > 0 else None


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
