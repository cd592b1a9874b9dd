"""Task events for the work Celery does not report by itself, so that Flower shows it.

celery-batches runs many messages as one call of the batch function and sends no task
events for them: without these, every embed message would stay ``PENDING`` in Flower (it
saw only ``task-sent``). A worker therefore sends, for each embed message,

* ``task-received`` when the message is buffered (from the worker's main process),
* ``task-started`` when its batch starts, and
* ``task-succeeded`` with the message's own result (docs, what its batch wrote, the batch's
  id), or ``task-failed`` with the reason, once its batch is written;

and, for each batch, a task of its own named :data:`EMBED_BATCH`, whose kwargs say what it
holds (version, messages, docs) and whose result says what it did (written, cache hits,
encoded, failed, milliseconds); its runtime is the batch's duration.

Training runs report progress as ``task-progress`` events whose ``result`` carries step,
total, percent, loss and phase: Flower shows the fields of a task it knows (not custom
ones), and ``result`` is where Celery's own ``PROGRESS`` state keeps the same thing.

Events are a courtesy: sending one never fails the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery.utils.saferepr import saferepr

logger = logging.getLogger(__name__)

#: the name under which Flower lists embedding batches (not a task anyone can call)
EMBED_BATCH = "pgfleet.embed_batch"

#: (event type, fields)
Event = tuple[str, dict[str, Any]]


def received(task_id: str, name: str, args: Any, kwargs: Any) -> Event:
    return ("task-received", {"uuid": task_id, "name": name, "args": saferepr(args),
                              "kwargs": saferepr(kwargs), "retries": 0, "root_id": task_id,
                              "parent_id": None})


def started(task_id: str) -> Event:
    """(the dispatcher adds the sending process's pid)"""
    return ("task-started", {"uuid": task_id})


def succeeded(task_id: str, result: Any, runtime_s: float) -> Event:
    return ("task-succeeded", {"uuid": task_id, "result": saferepr(result),
                               "runtime": round(runtime_s, 6)})


def failed(task_id: str, error: BaseException | str, runtime_s: float | None = None) -> Event:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    fields: dict[str, Any] = {"uuid": task_id, "exception": text, "traceback": ""}
    if runtime_s is not None:
        fields["runtime"] = round(runtime_s, 6)
    return ("task-failed", fields)


def batch_kwargs(version_id: int, messages: int, docs: int) -> dict[str, int]:
    return {"version_id": version_id, "messages": messages, "docs": docs}


def batch_result(report: Any, duration_s: float) -> dict[str, Any]:
    """What a batch did, from its :class:`~pgfleet.embedding.pipeline.BatchReport`: docs asked for,
    docs still pending when fetched, vectors written, cache hits, texts encoded, failures."""
    return {"docs": report.requested, "fetched": report.fetched, "written": report.written,
            "cache_hits": report.cache_hits, "encoded": report.model_calls,
            "failed": len(report.failures), "ms": round(duration_s * 1000.0, 1)}


def progress_result(state: dict[str, Any]) -> dict[str, Any]:
    """A training run's progress, as Flower shows it in the task's result while it runs."""
    step, total = state.get("step"), state.get("total_steps")
    shown = {"run_id": state.get("run_id"), "phase": state.get("phase"), "step": step,
             "total_steps": total}
    if step is not None and total:
        shown["percent"] = round(100.0 * step / total, 1)
    if state.get("loss") is not None:
        shown["loss"] = round(float(state["loss"]), 4)
    return shown


class Emitter:
    """Sends task events from a worker's pool process, as ``Task.send_event`` does: on a
    producer of the app's pool, attributed to the worker (``hostname``)."""

    def __init__(self, app: Any, hostname: str | None):
        self.app = app
        self.hostname = hostname

    @property
    def enabled(self) -> bool:
        return bool(self.hostname) and bool(self.app.conf.worker_send_task_events)

    def send(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events or not self.enabled:
            return
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                for type_, fields in events:
                    dispatcher.send(type_, **fields)
        except Exception as exc:  # noqa: BLE001 - events are a courtesy; the work is done
            logger.warning("could not send %d task events: %s: %s", len(events),
                           type(exc).__name__, exc)
            logger.debug("sending task events failed", exc_info=True)
