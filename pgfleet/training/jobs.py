"""Training-queue jobs as plain functions (the Celery tasks and ``pgfleet train`` call them)."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import psycopg

import schema
from pgfleet.corpus import stdlib_paragraphs
from pgfleet.embedding.engines.base import ModelSpec
from pgfleet.embedding.engines.registry import resolve_artifact
from pgfleet.errors import PgfleetError
from pgfleet.models import versions
from pgfleet.models.versions import embedding_version, register_under_lock
from pgfleet.settings import Settings

logger = logging.getLogger(__name__)


def models_dir(settings: Settings) -> Path:
    """Where produced models are written. Every worker that serves them must see the same
    path (one machine, or shared storage): ``PGFLEET_MODELS_DIR``, else ``$PGFLEET_HOME/models``."""
    return (settings.models_dir or settings.home / "models").resolve()


def sample_texts(conn: psycopg.Connection, size: int) -> tuple[list[str], str]:
    """A fixed sample of the table's own docs; topped up with documentation paragraphs when
    the table holds fewer non-empty docs than asked for."""
    rows = conn.execute(schema.query("training_sample_docs"), (size,)).fetchall()
    texts = [r[0] for r in rows]
    if len(texts) >= size:
        return texts, "docs"
    extra = stdlib_paragraphs(size - len(texts))
    return texts + extra, f"docs ({len(texts)}) + documentation paragraphs ({len(extra)})"


def run_artifact_dir(settings: Settings, name: str, run_id: int) -> Path:
    """The directory a training run writes its model to: ``<name>-run<id>``, its own, so
    that two runs of one source never write (or delete) each other's files, whatever
    version labels they end up with. Anything there is a leftover of this same run."""
    directory = models_dir(settings) / f"{name}-run{int(run_id)}"
    if directory.exists():
        shutil.rmtree(directory)
    return directory


def register_version(conn: psycopg.Connection, source: ModelSpec, *, fmt: str, artifact: str,
                     metrics: dict[str, Any], base: str | None = None,
                     version: str | None = None) -> dict[str, Any]:
    """Register a new, inactive embedding version derived from ``source``: labelled
    ``version`` exactly, or the first free label from ``base`` (chosen atomically). Its
    index is built when it is activated (``pgfleet ab set``), concurrently."""
    if version is not None and base is None:
        def label_of() -> str:
            return version
    elif base is not None and version is None:
        def label_of() -> str:  # the first free one, read under the name's lock
            return versions.label_from_base(versions.taken_labels(conn, source.name), base)
    else:
        raise ValueError("give the version label or the base to choose it from")

    def insert(label: str) -> int:
        return versions.insert(
            conn, kind="embedding", name=source.name, version=label, fmt=fmt,
            artifact=artifact, dimensions=source.dimensions,
            max_seq_length=source.max_seq_length, metrics=metrics, parent_id=source.version_id)

    label, version_id = register_under_lock(conn, source.name, label_of, insert)
    return {"version_id": version_id, "name": source.name, "version": label, "format": fmt,
            "artifact": artifact, "parent": source.label, "metrics": metrics}


def run_quantize(conn: psycopg.Connection, settings: Settings, from_ref: str | int,
                 *, run_id: int, sample_size: int = 200) -> dict[str, Any]:
    """Export a torch version to ONNX, quantize it to INT8, measure both against the source
    on the table's own docs, and register the INT8 model as a new, inactive version."""
    from pgfleet.embedding.engines.onnx_engine import OnnxEngine
    from pgfleet.embedding.engines.torch_engine import TorchEngine
    from pgfleet.training.measure import fidelity, throughput
    from pgfleet.training.quantize import export_and_quantize

    source = embedding_version(conn, str(from_ref))
    if source.format != "torch":
        raise PgfleetError(f"model version {source.label} is {source.format}; quantize a torch "
                           "version")
    directory = run_artifact_dir(settings, source.name, run_id)
    version = f"run{run_id}"  # the label is chosen at registration
    source_path = resolve_artifact(source.artifact)
    result = export_and_quantize(source, source_path, directory)
    texts, sample_source = sample_texts(conn, sample_size)

    # measured on CPU: INT8 is a CPU engine, and the comparison must be like for like
    torch_engine = TorchEngine(source, source_path, device="cpu", threads=settings.torch_threads)
    specs = {fmt: ModelSpec(-1, source.name, version, fmt, str(directory), source.dimensions,
                            source.max_seq_length) for fmt in ("onnx", "onnx-int8")}
    fp32 = OnnxEngine(specs["onnx"], str(directory), threads=settings.torch_threads)
    int8 = OnnxEngine(specs["onnx-int8"], str(directory), threads=settings.torch_threads)
    speed = {
        "torch_fp32": throughput(torch_engine, lambda t: torch_engine.model.encode(
            t, batch_size=max(1, len(t)), show_progress_bar=False), texts),
        "onnx_fp32": throughput(fp32, fp32._encode_group, texts),
        "onnx_int8": throughput(int8, int8._encode_group, texts),
    }
    reference = torch_engine.encode(texts)
    fp32_size, int8_size = result.fp32_path.stat().st_size, result.int8_path.stat().st_size
    metrics = {
        "file_bytes": {"onnx_fp32": fp32_size, "onnx_int8": int8_size,
                       "int8_to_fp32": round(int8_size / fp32_size, 4)},
        "docs_per_s": speed,
        "speedup": {
            "int8_vs_torch_fp32": round(speed["onnx_int8"]["best_docs_per_s"]
                                        / speed["torch_fp32"]["best_docs_per_s"], 3),
            "int8_vs_onnx_fp32": round(speed["onnx_int8"]["best_docs_per_s"]
                                       / speed["onnx_fp32"]["best_docs_per_s"], 3)},
        "fidelity_int8": fidelity(reference, int8.encode(texts)),
        "fidelity_onnx_fp32": fidelity(reference, fp32.encode(texts)),
        "quantization": result.quantization,
        "sample": {"docs": len(texts), "source": sample_source},
        "measured_on": {"cpu": platform.processor() or platform.machine(),
                        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
    }
    registered = register_version(conn, source, base=f"{source.version}-int8",
                                  fmt="onnx-int8", artifact=str(directory), metrics=metrics)
    logger.info("registered %s@%s (onnx-int8): %s", source.name, registered["version"],
                metrics["speedup"])
    return registered


def quantize_job(conn: psycopg.Connection, settings: Settings, run, *, from_version: str,
                 sample: int) -> dict[str, Any]:
    """The ``quantize`` job: :func:`run_quantize` under its run, with checked options."""
    run.phase("export to ONNX, quantize, measure")
    return run_quantize(conn, settings, from_version, sample_size=sample, run_id=run.id)
