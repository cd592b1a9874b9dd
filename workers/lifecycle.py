"""Per-process resources of a worker: settings, the connection pool, the pipeline.

Created lazily in the process that uses them (after the prefork pool forks), never at import
time and never in the parent: a pool or a CUDA context must not cross a fork.
"""

from __future__ import annotations

import logging
import os
import threading

from celery import signals

from pgfleet.settings import Settings, resolve_urls

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, object] = {}


def settings() -> Settings:
    with _lock:
        value = _state.get("settings")
        if value is None:
            value = _state["settings"] = Settings.from_env()
        return value  # type: ignore[return-value]


def pipeline():
    """The embedding pipeline of this process, created on first use."""
    from pgfleet import db
    from pgfleet.embedding.engines import load_for
    from pgfleet.embedding.pipeline import EmbedPipeline

    conf = settings()
    with _lock:
        value = _state.get("pipeline")
        if value is None or _state.get("pid") != os.getpid():
            pool = db.open_pool(resolve_urls(conf).database_url, min_size=1, max_size=3,
                                name="pgfleet-worker")
            value = EmbedPipeline(
                pool, conf,
                lambda spec: load_for(spec, conf))
            _state["pipeline"] = value
            _state["pid"] = os.getpid()
        return value


def source_pipeline():
    """The source pipeline of this process: the embedding pipeline's pool, model and name."""
    from pgfleet.sources.pipeline import SourcePipeline

    embed = pipeline()
    with _lock:
        value = _state.get("source_pipeline")
        if value is None or getattr(value, "pool", None) is not embed.pool:
            value = _state["source_pipeline"] = SourcePipeline(
                embed.pool, embed.settings, spec=embed.spec, engine=embed.engine,
                name=embed.name)
        return value


@signals.worker_init.connect
def _threads_sleep_when_idle(**_kwargs) -> None:
    """torch's and ONNX Runtime's OpenMP threads sleep when they have no work instead of
    spinning. On a machine the worker shares (the API, PostgreSQL, another worker) a
    spinning thread burns the cores the others need: measured on 2 cores with the API
    answering searches during a backlog, the torch worker needed 28 CPU-s for 600 docs
    instead of 15, and kept 0.36 of its throughput against 0.55 with its threads sleeping.
    Alone on the machine it costs the worker up to 7% (1,500 docs: 57.6 and 61.7 docs/s,
    against 66.3 and 62.0 with threads that always spin; docs/benchmarks.md).
    Set in the worker's main process before its pool starts, so that the pool's processes
    read it when they first load torch; a value already set is kept. Only in workers: a
    command line or benchmark that imports this package keeps the runtime's default."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@signals.worker_process_init.connect
def _forget_parent_state(**_kwargs) -> None:
    # a forked child must build its own pool; the parent's connections are not its own
    with _lock:
        _state.pop("pipeline", None)
        _state.pop("source_pipeline", None)


@signals.worker_process_shutdown.connect
def _close(**_kwargs) -> None:
    with _lock:
        value = _state.pop("pipeline", None)
    if value is not None:
        try:
            value.writer.close(timeout=30)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - its docs stay pending and are republished
            logger.warning("the last write did not finish before shutdown", exc_info=True)
        try:
            value.pool.close(timeout=5)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - shutting down anyway
            logger.debug("closing the pool failed", exc_info=True)
