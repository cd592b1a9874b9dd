"""Embedding engines: one interface, chosen by the model version's format.

An engine turns texts into unit vectors for one :class:`~pgfleet.models.spec.ModelSpec`. A
new format is a module here, a branch of the registry, a value of ``ModelFormat`` and a
queue in :mod:`workers.queues`. Heavy imports (torch, onnxruntime) happen inside the
loaders, never at import time. Part of :mod:`pgfleet.embedding`: it may import
:mod:`pgfleet.models` and the layers below it, nothing above the library.
"""

from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.embedding.engines.registry import load_engine, load_for, resolve_artifact

__all__ = ["Engine", "ModelSpec", "load_engine", "load_for", "resolve_artifact"]
