"""The engine interface every embedding backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

ModelFormat = Literal["torch", "onnx", "onnx-int8"]


@dataclass(frozen=True)
class ModelSpec:
    """What an engine needs to know about a model version."""

    version_id: int
    name: str
    version: str
    format: ModelFormat
    artifact: str
    dimensions: int
    max_seq_length: int | None = None

    @classmethod
    def from_row(cls, row: dict) -> ModelSpec:
        return cls(version_id=row["id"], name=row["name"], version=row["version"],
                   format=row["format"], artifact=row["artifact"],
                   dimensions=row["dimensions"], max_seq_length=row.get("max_seq_length"))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


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
