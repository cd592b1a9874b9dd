"""The task events that make batch items and training progress visible in Flower: their
payloads, without a broker."""

from __future__ import annotations

import ast

from pgfleet.embedding.pipeline import BatchReport, Failure
from workers import events


def test_message_events_carry_what_flower_shows():
    assert events.received("m1", "pgfleet.embed_docs", (1, [2, 3]), {}) == (
        "task-received", {"uuid": "m1", "name": "pgfleet.embed_docs", "args": "(1, [2, 3])",
                          "kwargs": "{}", "retries": 0, "root_id": "m1", "parent_id": None})
    # the dispatcher adds the sending process's pid: a pid here would be given twice
    assert events.started("m1") == ("task-started", {"uuid": "m1"})
    kind, fields = events.succeeded("m1", {"doc_ids": 2, "batch": "b1"}, 0.0123456789)
    assert kind == "task-succeeded" and fields["runtime"] == 0.012346
    assert ast.literal_eval(fields["result"]) == {"doc_ids": 2, "batch": "b1"}
    kind, fields = events.failed("m1", ValueError("doc ids [9] do not exist"), 0.5)
    assert kind == "task-failed"
    assert fields == {"uuid": "m1", "exception": "ValueError: doc ids [9] do not exist",
                      "traceback": "", "runtime": 0.5}
    assert "runtime" not in events.failed("m1", "the worker process died")[1]


def test_a_batch_says_what_it_held_and_what_it_did():
    assert events.batch_kwargs(1, 4, 64) == {"version_id": 1, "messages": 4, "docs": 64}
    report = BatchReport(1, requested=64, fetched=60, written=57, cache_hits=20, model_calls=37,
                         failures=[Failure(5, b"x", "empty content", "empty")])
    assert events.batch_result(report, 0.25) == {
        "docs": 64, "fetched": 60, "written": 57, "cache_hits": 20, "encoded": 37,
        "failed": 1, "ms": 250.0}


def test_training_progress_reads_as_a_result():
    state = {"step": 30, "total_steps": 120, "loss": 0.412345, "phase": "train", "run_id": 7}
    assert events.progress_result(state) == {"run_id": 7, "phase": "train", "step": 30,
                                             "total_steps": 120, "percent": 25.0,
                                             "loss": 0.4123}
    # before the first step is known: no percent, no loss
    assert events.progress_result({"step": 0, "total_steps": None, "loss": None,
                                   "phase": "synthesize", "run_id": 7}) == {
        "run_id": 7, "phase": "synthesize", "step": 0, "total_steps": None}


def test_an_emitter_without_a_worker_name_sends_nothing():
    class App:
        class conf:  # noqa: N801 - stands in for Celery's settings object
            worker_send_task_events = True

        @property
        def events(self):
            raise AssertionError("no dispatcher should be asked for")

    emitter = events.Emitter(App(), None)
    assert not emitter.enabled
    emitter.send([events.started("m1")])
