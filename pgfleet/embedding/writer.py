"""The write side of the embedding path: the background thread that runs writes in order,
and the parameters of one ``write_batch`` statement (and of its items, one by one)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pgfleet.embedding.batching import BatchPlan
from pgfleet.embedding.engines.base import ModelSpec


class Writer:
    """One background thread that runs writes in order, at most one in flight: submitting
    waits for the previous write, so a fast encoder cannot pile up batches in memory."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgfleet-write")
        self._last: Future[Any] | None = None

    def submit(self, action: Callable[[], Any]) -> Future[Any]:
        self.drain()
        self._last = self._executor.submit(action)
        return self._last

    def after(self, action: Callable[[], Any]) -> None:
        """Run ``action`` once every write submitted so far is done (without waiting)."""
        self._executor.submit(action)

    def drain(self, timeout: float | None = None) -> None:
        if self._last is not None:
            self._last.exception(timeout)  # errors are handled (and logged) by the action

    def close(self, timeout: float | None = None) -> None:
        self.drain(timeout)
        self._executor.shutdown(wait=True)


def single_items(params: dict[str, Any]) -> list[dict[str, Any]]:
    """One write's parameters per doc, each with its own cache row and hit count."""
    misses = dict(zip(params["miss_hashes"], params["miss_vectors"], strict=True))
    hits = dict(zip(params["hit_hashes"], params["hit_counts"], strict=True))
    items = []
    for doc_id, digest, vector in zip(params["doc_ids"], params["hashes"], params["vectors"],
                                      strict=True):
        item = dict(params, doc_ids=[doc_id], hashes=[digest], vectors=[vector],
                    miss_hashes=[digest] if digest in misses else [],
                    miss_vectors=[misses[digest]] if digest in misses else [],
                    hit_hashes=[digest] if digest in hits else [],
                    hit_counts=[1] if digest in hits else [], batch_size=1,
                    cache_hits=1 if digest in hits else 0,
                    model_calls=1 if digest in misses else 0)
        items.append(item)
    return items


def write_params(spec: ModelSpec, plan: BatchPlan, encoded: dict[bytes, np.ndarray],
                  ) -> dict[str, Any]:
    doc_ids: list[int] = []
    hashes: list[bytes] = []
    vectors: list[np.ndarray] = []
    for doc_id, (digest, vector) in plan.hits.items():
        doc_ids.append(doc_id)
        hashes.append(digest)
        vectors.append(vector)
    for digest, docs in plan.docs_by_hash.items():
        miss = encoded.get(digest)
        if miss is None:
            continue
        for doc_id in docs:
            doc_ids.append(doc_id)
            hashes.append(digest)
            vectors.append(miss)
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)  # lock rows in one order
    return {
        "version_id": spec.version_id,
        "doc_ids": [doc_ids[i] for i in order],
        "hashes": [hashes[i] for i in order],
        "vectors": [vectors[i] for i in order],
        "miss_hashes": list(encoded),
        "miss_vectors": list(encoded.values()),
        "hit_hashes": list(plan.hit_counts),
        "hit_counts": list(plan.hit_counts.values()),
    }

