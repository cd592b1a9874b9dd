"""Measure a quantized version against its source, on the same texts, in one process:
file sizes, docs/s at batch 1, batch 64 and each engine's best token budget, and fidelity
(cosine to the source, top-10 nearest-neighbour overlap)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pgfleet.embedding.engines.base import Engine

logger = logging.getLogger(__name__)

#: token budgets tried for each engine's best (padded tokens per forward pass)
BUDGETS = (256, 512, 1024, 2048)


def fidelity(source: np.ndarray, other: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean and minimum cosine between matching rows, and the mean overlap of each row's
    top-k neighbours (self excluded) under the two sets of vectors."""
    cos = np.sum(source * other, axis=1) / (
        np.linalg.norm(source, axis=1) * np.linalg.norm(other, axis=1))
    k = min(k, len(source) - 1)
    overlap = float("nan")
    if k >= 1:
        a, b = source @ source.T, other @ other.T
        np.fill_diagonal(a, -np.inf)
        np.fill_diagonal(b, -np.inf)
        top_a = np.argsort(-a, axis=1)[:, :k]
        top_b = np.argsort(-b, axis=1)[:, :k]
        overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b,
                                                                           strict=True)]))
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "top10_overlap": round(overlap, 4)}


def _rate(run: Callable[[], Any], count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def throughput(engine: Engine, forward: Callable[[list[str]], Any], texts: Sequence[str],
               *, batch1_docs: int = 48, budgets: Sequence[int] = BUDGETS) -> dict[str, Any]:
    """docs/s one at a time, in length-sorted batches of 64, and at the best token budget."""
    ordered = sorted(texts, key=len)
    forward(ordered[:8])  # warm-up
    singles = list(texts[:batch1_docs])
    batch1 = _rate(lambda: [forward([t]) for t in singles], len(singles))
    batch64 = _rate(lambda: [forward(ordered[i:i + 64]) for i in range(0, len(ordered), 64)],
                    len(ordered))
    by_budget = {}
    original = engine.token_budget  # type: ignore[attr-defined]
    try:
        for budget in budgets:
            engine.token_budget = budget  # type: ignore[attr-defined]
            by_budget[budget] = _rate(lambda: engine.encode(list(texts)), len(texts))
    finally:
        engine.token_budget = original  # type: ignore[attr-defined]
    best = max(by_budget, key=by_budget.__getitem__)
    return {"batch1_docs_per_s": round(batch1, 1), "batch64_docs_per_s": round(batch64, 1),
            "best_docs_per_s": round(by_budget[best], 1), "best_token_budget": best}
