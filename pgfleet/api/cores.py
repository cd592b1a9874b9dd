"""How many of the machine's cores the rest of the machine leaves to this process, measured
now: what the API's engine may widen to.

The fleet's workers, PostgreSQL and the API share one machine by default. An API engine that
runs on every core while a worker embeds a backlog makes both slower than either alone (two
processes each running on both cores take turns). One that runs on one core while nothing
else runs leaves half an idle machine unused. :class:`FreeCores` samples the machine's busy
CPU time and this process's own every ``interval_s``; what the other processes used, averaged
over the last samples, is what they will need next, and the rest is free.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import psutil

logger = logging.getLogger(__name__)

#: how often the machine is sampled
INTERVAL_S = 0.25
#: weight of the newest sample in the running average (about a second of memory)
SMOOTHING = 0.3
#: a core counts as taken by the others from this share of it on
TAKEN_FROM = 0.6


def free_cores(cores: int, others_busy: float) -> int:
    """The cores left when the other processes keep ``others_busy`` cores busy: at least one.
    A core the others use a little (under ``TAKEN_FROM`` of it: PostgreSQL answering
    this process's own queries, a monitoring agent) still counts as free."""
    taken = int(others_busy + (1 - TAKEN_FROM))
    return max(1, cores - taken)


def _busy_s(times) -> float:
    # guest time is counted in user time already
    spare = ("idle", "iowait", "guest", "guest_nice")
    return sum(times) - sum(getattr(times, name, 0.0) for name in spare)


class FreeCores:
    """A sampler thread; :meth:`__call__` answers the free cores at once (no system call)."""

    def __init__(self, *, cores: int | None = None, interval_s: float = INTERVAL_S):
        self.cores = cores or os.cpu_count() or 1
        self.interval_s = interval_s
        self.others_busy = 0.0
        self._free = self.cores
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._run, name="free-cores", daemon=True)
        self._thread.start()

    def __call__(self) -> int:
        return self._free

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2 * self.interval_s + 1)

    def _sample(self) -> tuple[float, float, float]:
        own = self._process.cpu_times()
        return (time.monotonic(), _busy_s(psutil.cpu_times()), own.user + own.system)

    def _run(self) -> None:
        try:
            last = self._sample()
            while not self._stop.wait(self.interval_s):
                now = self._sample()
                elapsed = now[0] - last[0]
                if elapsed <= 0:
                    continue
                others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / elapsed
                last = now
                self.others_busy += SMOOTHING * (others - self.others_busy)
                self._free = free_cores(self.cores, self.others_busy)
        except Exception:  # noqa: BLE001 - without a gauge, the engine keeps one lane
            logger.exception("cannot sample the machine's CPU; the API's engine keeps one core")
            self._free = 1
