"""Test doubles of pgfleet's boundaries, implementing the real interfaces.

:class:`FakeEngine` turns text into deterministic unit vectors without a model, and can be
told to fail on chosen texts: for fast tests and for injecting poison items. Integration tests
of the fleet itself run the real model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pgfleet.embedding.engines.base import ModelSpec


class PoisonError(RuntimeError):
    """Raised by FakeEngine for a poisoned text."""


class FakeEngine:
    def __init__(self, spec: ModelSpec, *, poison: str | None = None, max_seq_length: int = 256):
        self.spec = spec
        self.dimensions = spec.dimensions
        self.max_seq_length = max_seq_length
        self.poison = poison
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.poison is not None and any(self.poison in t for t in texts):
            raise PoisonError(f"cannot embed a text containing {self.poison!r}")
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            row = np.random.default_rng(seed).standard_normal(self.dimensions)
            out[i] = row / np.linalg.norm(row)
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]
