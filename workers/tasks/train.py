"""Tasks of the training queue. Their state lives in PostgreSQL (the registry), not in the
broker: they are acknowledged when they start, so that Redis' visibility timeout never
re-runs a long job that is still running."""

from __future__ import annotations

import logging
from typing import Any

from workers import db, lifecycle
from workers.app import app
from workers.queues import QUEUE_TRAINING
from workers.settings import resolve_urls

logger = logging.getLogger(__name__)


@app.task(name="quantize", queue=QUEUE_TRAINING, acks_late=False, ignore_result=False)
def quantize(from_version: str | int = "v1", sample: int = 200) -> dict[str, Any]:
    """Export a torch embedding version to ONNX, quantize it to INT8 and register the result
    (``celery -A workers call quantize --kwargs '{"from_version": "v1"}'``)."""
    from workers.training.jobs import run_quantize

    settings = lifecycle.settings()
    with db.connect(resolve_urls(settings).database_url, autocommit=True) as conn:
        return run_quantize(conn, settings, from_version, sample_size=int(sample))
