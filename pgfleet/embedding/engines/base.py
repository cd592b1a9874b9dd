"""The engine interface every embedding backend implements."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from pgfleet.models.spec import ModelFormat, ModelSpec

__all__ = ["BudgetedEncoder", "Engine", "ModelFormat", "ModelSpec"]

class Engine(Protocol):
    """Turns texts into L2-normalized float32 vectors of ``dimensions`` floats each."""

    spec: ModelSpec
    dimensions: int
    max_seq_length: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dimensions)`` float32 array, one normalized row per text."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before truncation (special tokens included)."""
        ...


class BudgetedEncoder:
    """The encode loop both engines share: texts sorted by length and grouped so that
    ``count * longest <= token_budget`` per forward pass; each engine supplies
    ``_encode_group`` (one forward pass, normalized float32 rows) and ``tokenizer``."""

    dimensions: int
    max_seq_length: int
    token_budget: int
    tokenizer: Any

    def _encode_group(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from pgfleet.embedding.batching import token_budget_groups

        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        lengths = [min(n, self.max_seq_length) for n in self.token_counts(texts)]
        for group in token_budget_groups(lengths, self.token_budget):
            out[group] = self._encode_group([texts[i] for i in group])
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        encoded = self.tokenize(list(texts), add_special_tokens=True, truncation=False,
                                return_attention_mask=False, return_token_type_ids=False,
                                verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    @property
    def tokenizer_lock(self) -> threading.Lock:
        """Held by every use of the tokenizer. A fast tokenizer keeps its padding and
        truncation as state that each call sets (token counts turn both off, a pass turns
        them on), so calls from two threads (the API's lanes, a request counting tokens) must
        not interleave."""
        lock = self.__dict__.get("_tokenizer_lock")
        if lock is None:  # made once; dict.setdefault is atomic, so two threads get one lock
            lock = self.__dict__.setdefault("_tokenizer_lock", threading.Lock())
        return lock

    def tokenize(self, texts: list[str], **kwargs: Any) -> Any:
        with self.tokenizer_lock:
            return self.tokenizer(texts, **kwargs)
