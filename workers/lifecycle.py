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


@signals.worker_process_init.connect
def _forget_parent_state(**_kwargs) -> None:
    # a forked child must build its own pool; the parent's connections are not its own
    with _lock:
        _state.pop("pipeline", None)


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
