"""Embedding engines: one interface, chosen by the model version's format.

Heavy imports (torch, onnxruntime) happen inside the loaders, never at import time.
"""

from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.engines.registry import load_engine, load_for, resolve_artifact

__all__ = ["Engine", "ModelSpec", "load_engine", "load_for", "resolve_artifact"]
