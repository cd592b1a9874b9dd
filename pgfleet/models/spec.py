"""What an engine needs to know about a model version (pure: no database, no model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
