"""The batcher that gathers concurrent callers' texts into shared forward passes, with a
fake encode (the real engine is in tests/integration/test_api.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pgfleet.embedding.batcher import Batcher, BatcherClosed


class Recorder:
    """Encodes a text as [len(text), pass number] and remembers each pass."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None):
        self.passes: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.passes.append(list(texts))
            number = len(self.passes)
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return np.array([[len(t), number] for t in texts], dtype=np.float32)


def test_an_idle_engine_takes_a_text_at_once():
    encode = Recorder()
    batcher = Batcher(encode, max_batch=64, max_wait_s=0.5)
    try:
        started = time.monotonic()
        vector = batcher.embed(["alone"])
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert vector.tolist() == [[5.0, 1.0]]
    assert waited < 0.2, waited
    assert encode.passes == [["alone"]]


def test_after_a_pass_a_text_waits_for_company_at_most_the_max_wait():
    encode = Recorder()
    batcher = Batcher(encode, max_batch=64, max_wait_s=0.1)
    try:
        batcher.embed(["first"])
        started = time.monotonic()
        batcher.embed(["second"])
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert 0.05 <= waited < 0.6, waited   # the wait fired: the pass did not wait for more
    assert encode.passes == [["first"], ["second"]]


def test_concurrent_callers_share_passes_and_each_gets_its_own_rows():
    encode = Recorder()
    batcher = Batcher(encode, max_batch=64, max_wait_s=0.3)
    texts = [f"text number {i}" + "x" * i for i in range(16)]
    barrier = threading.Barrier(16)

    def call(text: str) -> np.ndarray:
        barrier.wait()
        return batcher.embed([text])

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, texts))
    finally:
        batcher.close()
    # the first to arrive found the engine idle and went alone at once; the others
    # gathered behind it
    assert len(encode.passes) <= 2, encode.passes
    assert sorted(t for p in encode.passes for t in p) == sorted(texts)
    for text, rows in zip(texts, results, strict=True):
        assert rows.shape == (1, 2) and rows[0][0] == len(text)
    assert sum(batcher.pass_sizes.values()) == len(encode.passes)


def test_full_passes_go_without_waiting_and_only_the_remainder_waits():
    encode = Recorder()
    times: list[float] = []
    batcher = Batcher(lambda texts: (times.append(time.monotonic()), encode(texts))[1],
                      max_batch=4, max_wait_s=0.3)
    try:
        started = time.monotonic()
        rows = batcher.embed([f"t{i}" for i in range(10)], timeout_s=5)
    finally:
        batcher.close()
    assert [len(p) for p in encode.passes] == [4, 4, 2]
    assert rows[:, 0].tolist() == [2.0] * 10
    assert times[1] - started < 0.15           # two full passes at once
    assert 0.25 <= times[2] - started < 1.0     # the remainder waited for company


def test_texts_that_arrive_while_a_pass_runs_go_together_in_the_next():
    encode = Recorder(delay_s=0.2)
    batcher = Batcher(encode, max_batch=64, max_wait_s=0.0)
    try:
        with ThreadPoolExecutor(9) as pool:
            first = pool.submit(batcher.embed, ["first"])
            time.sleep(0.05)            # the first pass is running now
            rest = [pool.submit(batcher.embed, [f"later {i}"]) for i in range(8)]
            first.result(5)
            [f.result(5) for f in rest]
    finally:
        batcher.close()
    assert encode.passes[0] == ["first"]
    assert sorted(encode.passes[1]) == sorted(f"later {i}" for i in range(8))


def test_a_failed_pass_fails_its_callers_only():
    encode = Recorder(fail_on="poison")
    batcher = Batcher(encode, max_batch=2, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="poison"):
            batcher.embed(["poison", "neighbour"])
        assert batcher.embed(["fine"]).shape == (1, 2)
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_new_texts():
    batcher = Batcher(Recorder(), max_batch=2, max_wait_s=0.0)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.embed(["late"])
    with pytest.raises(ValueError):
        Batcher(Recorder(), max_batch=0)


def test_lanes_run_passes_side_by_side_as_many_as_allowed_now():
    encode = Recorder(delay_s=0.3)
    allowed = [2]
    batcher = Batcher(encode, max_batch=1, max_wait_s=0.0, lanes=2,
                      active_lanes=lambda: allowed[0])
    try:
        with ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            list(pool.map(lambda t: batcher.embed([t]), ["a", "b"]))
            side_by_side = time.monotonic() - started
            assert batcher.concurrency[2] >= 1, batcher.concurrency
            assert side_by_side < 0.55, side_by_side    # two passes of 0.3 s at once
            allowed[0] = 1          # the machine got busy: one lane
            time.sleep(0.1)
            before = dict(batcher.concurrency)
            started = time.monotonic()
            list(pool.map(lambda t: batcher.embed([t]), ["c", "d"]))
            one_by_one = time.monotonic() - started
        assert dict(batcher.concurrency) == {**before, 1: before.get(1, 0) + 2}
        assert one_by_one >= 0.55, one_by_one
    finally:
        batcher.close()
    assert sorted(t for p in encode.passes for t in p) == ["a", "b", "c", "d"]


def test_a_failing_lane_gauge_leaves_one_lane():
    def broken() -> int:
        raise RuntimeError("no gauge")

    batcher = Batcher(Recorder(delay_s=0.2), max_batch=1, max_wait_s=0.0, lanes=2,
                      active_lanes=broken)
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda t: batcher.embed([t]), ["a", "b"]))
    finally:
        batcher.close()
    assert [r.tolist() for r in results] and set(batcher.concurrency) == {1}
