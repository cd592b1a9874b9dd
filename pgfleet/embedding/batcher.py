"""Batching across callers: concurrent ``embed(texts)`` calls from many threads (the HTTP
API's requests) gathered into one ``encode`` call.

One thread per engine runs the forward passes, so that a version's model is used by one
pass at a time. It takes what is waiting as soon as either

* ``max_batch`` texts are waiting, or
* ``max_wait_s`` has passed since the last pass ended,

and while a pass runs, new texts queue for the next one (continuous batching: the busier
the engine, the fuller its passes). An idle engine takes a text at once; a text waits at most
``max_wait_s`` beyond the pass running when it arrived. Counting the wait from the end of the
last pass lets the callers that pass just answered send their next texts in time to join
the texts that queued meanwhile: closed-loop callers would otherwise split into two cohorts
taking turns, each with half-full passes. A failed pass fails the calls whose texts were in
it, with the engine's exception; the others are not touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Waiting:
    text: str
    future: Future = field(default_factory=Future)
    since: float = field(default_factory=time.monotonic)


class BatcherClosed(RuntimeError):
    """The batcher was closed before the text's pass ran."""


#: how often a lane that may not run yet looks again at ``active_lanes()``
LANE_POLL_S = 0.05


class Batcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], *, max_batch: int = 64,
                 max_wait_s: float = 0.002, name: str = "batcher",
                 on_pass: Callable[[int], None] | None = None, lanes: int = 1,
                 active_lanes: Callable[[], int] | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.lanes = lanes
        self._active_lanes = active_lanes
        self._waiting: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_pass = on_pass
        #: passes running now
        self.running = 0
        #: passes by how many texts they held (the API's metrics and the tests read it)
        self.pass_sizes: Counter[int] = Counter()
        #: passes by how many ran at once, this one included
        self.concurrency: Counter[int] = Counter()
        self._threads = [threading.Thread(target=self._run, args=(lane,), daemon=True,
                                          name=name if lanes == 1 else f"{name}-{lane}")
                         for lane in range(lanes)]
        for thread in self._threads:
            thread.start()

    def embed(self, texts: Sequence[str], timeout_s: float | None = None) -> np.ndarray:
        """The texts' vectors, one row each, computed in passes shared with other callers."""
        waiting = [_Waiting(t) for t in texts]
        if not waiting:
            raise ValueError("nothing to embed")
        with self._cond:
            if self._closed:
                raise BatcherClosed("the engine is shutting down")
            self._waiting.extend(waiting)
            self._cond.notify_all()
        return np.stack([w.future.result(timeout_s) for w in waiting])

    def replace_encode(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        """Encode with ``encode`` from the next pass on (an engine giving the same vectors)."""
        self._encode = encode

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking texts; the passes already waiting still run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _allowed(self) -> int:
        """How many lanes may run passes now (at least one, at most ``lanes``)."""
        if self._active_lanes is None or self.lanes == 1:
            return self.lanes
        try:
            wanted = int(self._active_lanes())
        except Exception:  # noqa: BLE001 - a failing gauge must not stop the engine
            logger.exception("active_lanes failed; running one lane")
            wanted = 1
        return max(1, min(self.lanes, wanted))

    def _run(self, lane: int) -> None:
        last_end: float | None = None
        while True:
            batch = self._take(lane, last_end)
            if batch is None:
                return
            if self._on_pass is not None:
                self._on_pass(len(batch))
            try:
                vectors = self._encode([w.text for w in batch])
            except BaseException as exc:  # noqa: BLE001 - each caller gets the engine's error
                # with the traceback: the callers get the error, the log says where it was
                logger.warning("a pass of %d texts failed: %s", len(batch), exc, exc_info=True)
                for w in batch:
                    w.future.set_exception(exc)
                continue
            finally:
                with self._cond:
                    self.running -= 1
                    last_end = time.monotonic()
                    self._cond.notify_all()
            for w, vector in zip(batch, vectors, strict=True):
                w.future.set_result(vector)

    def _take(self, lane: int, last_end: float | None) -> list[_Waiting] | None:
        """The lane's next pass's texts, once it is due; None once closed and drained. A lane
        past ``active_lanes()`` waits; lane 0 always runs."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closed:
                        return None
                    self._cond.wait()   # embed, close and a pass ending notify
                    continue
                if lane > 0 and not self._closed and lane >= self._allowed():
                    self._cond.wait(LANE_POLL_S)
                    continue
                break
            if last_end is not None:
                due = last_end + self.max_wait_s
                while len(self._waiting) < self.max_batch and not self._closed:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._waiting:          # another lane took them meanwhile
                    return self._take(lane, None) if not self._closed else None
            count = min(self.max_batch, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(count)]
            self.running += 1
            self.pass_sizes[len(batch)] += 1
            self.concurrency[self.running] += 1
            return batch
