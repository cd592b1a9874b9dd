"""How an embedding model is measured: retrieval on the held-out pairs, speed and size.

The held-out corpus is the held-out pairs' passages plus up to ``DISTRACTORS`` passages from
the training side (a fixed sample), so that retrieval is not trivially easy; each held-out
query (at most ``MAX_EVAL_QUERIES``) is scored by MRR@k and recall@k against it.
"""

from __future__ import annotations

import datetime as dt
import platform
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgfleet.errors import PgfleetError
from pgfleet.training.pairs import Pair

#: passages from the training side added to the held-out corpus, to make retrieval harder
DISTRACTORS = 2000
#: held-out queries at most (the metric's cost grows with them)
MAX_EVAL_QUERIES = 1000


def retrieval_metrics(encode: Callable[[list[str]], np.ndarray], held_out: Sequence[Pair],
                      distractors: Sequence[str], k: int = 10) -> dict[str, Any]:
    """MRR@k and recall@k of held-out queries (text_a) against the held-out passages
    (text_b) plus the distractors; a query's relevant passages are those paired with it."""
    queries = sorted({p.text_a for p in held_out})[:MAX_EVAL_QUERIES]
    chosen = set(queries)
    passages = sorted({p.text_b for p in held_out if p.text_a in chosen} | set(distractors))
    index = {text: i for i, text in enumerate(passages)}
    relevant: dict[str, set[int]] = {}
    for pair in held_out:
        if pair.text_a in chosen and (pair.score is None or pair.score >= 0.5):
            relevant.setdefault(pair.text_a, set()).add(index[pair.text_b])
    queries = [q for q in queries if q in relevant]
    if not queries:
        raise PgfleetError("no held-out query has a relevant passage (score >= 0.5)")
    q_vectors = encode(queries)
    p_vectors = encode(passages)
    scores = q_vectors @ p_vectors.T
    top = np.argsort(-scores, axis=1)[:, :k]
    rr, recall = [], []
    for query, ranked in zip(queries, top, strict=True):
        wanted = relevant[query]
        rank = next((i + 1 for i, doc in enumerate(ranked) if doc in wanted), None)
        rr.append(1.0 / rank if rank else 0.0)
        recall.append(len(wanted & set(ranked.tolist())) / len(wanted))
    return {f"mrr@{k}": round(float(np.mean(rr)), 4), f"recall@{k}": round(float(np.mean(recall)), 4),
            "queries": len(queries), "corpus": len(passages)}


def encoder(model, batch_size: int = 32) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)
    return encode


def docs_per_s(model, texts: Sequence[str], repeats: int = 2) -> float:
    """docs/s of ``model.encode`` on these texts in length-sorted batches of 32, the best
    of ``repeats`` runs."""
    ordered = sorted(texts, key=len)
    model.encode(ordered[:16], batch_size=16, show_progress_bar=False)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(ordered, batch_size=32, show_progress_bar=False)
        best = max(best, len(ordered) / (time.perf_counter() - started))
    return round(best, 1)


def parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pick_distractors(train: list[Pair], held: list[Pair]) -> list[str]:
    """Up to ``DISTRACTORS`` training-side passages that no held-out pair has (a fixed sample)."""
    held_passages = {p.text_b for p in held}
    pool = sorted({p.text_b for p in train} - held_passages)
    return random.Random(0).sample(pool, min(DISTRACTORS, len(pool)))


def measured_on() -> dict[str, Any]:
    """Where and when a measurement was made."""
    return {"cpu": platform.processor() or platform.machine(),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
