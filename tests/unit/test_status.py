"""``pgfleet status`` without services: merging what workers said, queue rows, coverage, and
the dashboard rendered from sample data."""

from __future__ import annotations

from rich.console import Console

from pgfleet.cli.status import age_text, lag_text, render, split_text
from pgfleet.ops.status import coverage, merge_workers, queue_rows


def test_workers_merge_the_broadcast_and_the_heartbeats():
    replies = {"gpu@a": [{"name": "embed.gpu"}], "cpu@a": [{"name": "embed.cpu"}]}
    heard = {"gpu@a": {"last_heartbeat": 98.0}, "old@b": {"last_heartbeat": 40.0}}
    assert merge_workers(replies, heard, now=100.0) == [
        {"name": "cpu@a", "online": True, "queues": ["embed.cpu"], "last_heartbeat_age_s": None},
        {"name": "gpu@a", "online": True, "queues": ["embed.gpu"], "last_heartbeat_age_s": 2.0},
        # heard from before, silent now: listed, with how long ago
        {"name": "old@b", "online": False, "queues": [], "last_heartbeat_age_s": 60.0},
    ]


def test_queue_rows_name_their_consumers_and_unknown_depths():
    workers = [{"name": "gpu@a", "online": True, "queues": ["embed.gpu"]},
               {"name": "gone@b", "online": False, "queues": ["embed.cpu"]}]
    rows = queue_rows([{"name": "embed.gpu", "depth": 0}, {"name": "embed.cpu", "depth": 7},
                       {"name": "training", "depth": 0}], workers)
    assert rows == [{"name": "embed.gpu", "depth": 0, "consumers": ["gpu@a"]},
                    {"name": "embed.cpu", "depth": 7, "consumers": []},
                    {"name": "training", "depth": 0, "consumers": []}]
    assert all(r["depth"] is None for r in queue_rows(None, workers))


def test_coverage_lag_ages_and_splits_read_plainly():
    assert coverage(0, 0) is None and coverage(1, 2) == 0.5 and coverage(3, 2) == 1.0
    assert lag_text(None).plain == "-" and lag_text(2.0).style == "green"
    assert lag_text(30.0).style == "yellow" and lag_text(600.0).plain == "10.0 min"
    assert age_text(0.4).plain == "0.4 s ago" and age_text(300.0).style == "red"
    assert split_text({"v2": 80, "v1": 20, "v3": 0}) == "v2 80% · v1 20% · v3 shadow"


def _sample():
    return {
        "generated_at": "2026-01-01T12:00:00+00:00",
        "versions": [{"id": 1, "name": "minilm", "version": "v1", "format": "torch",
                      "status": "ready", "active": True, "docs": 200, "embedded": 150,
                      "pending": 50, "failed": 2, "coverage": 0.75, "oldest_pending_s": 75.0}],
        "queues": [{"name": "embed.gpu", "depth": 12, "consumers": ["gpu@a"]},
                   {"name": "embed.cpu", "depth": 3, "consumers": []},
                   {"name": "training", "depth": None, "consumers": []}],
        "workers": [{"name": "gpu@a", "online": True, "queues": ["embed.gpu"],
                     "last_heartbeat_age_s": 1.2}],
        "ab": [{"name": "minilm", "kind": "embedding", "split": {"v1": 90, "v2": 10},
                "last_action": "set", "changed_at": "2026-01-01T11:00:00+00:00"}],
        "training": [{"id": 4, "task": "distill_embeddings", "status": "running", "step": 30,
                      "total_steps": 120, "phase": "train", "loss": 0.5, "heartbeat_age_s": 3.0,
                      "produced": None, "error": None, "created_at": "2026-01-01T11:30:00"}],
        "failures": [{"doc_id": 9, "version": "minilm@v1", "reason": "empty content",
                      "attempts": 1, "last_error": "nothing to embed",
                      "last_failed_at": "2026-01-01T11:59:00"}],
    }


def test_the_dashboard_shows_every_section():
    console = Console(record=True, width=150)
    console.print(render(_sample(), problem="cannot connect to PostgreSQL"))
    text = console.export_text()
    assert "1 worker(s) online, 50 doc(s) pending, 15 message(s) waiting" in text
    assert "cannot refresh: cannot connect to PostgreSQL (showing the last view)" in text
    for expected in ("minilm@v1", " 75%", "75.0 s", "embed.cpu", "none online", "gpu@a",
                     "1.2 s ago", "v1 90% · v2 10%", "set at 2026-01-01T11:00:00",
                     "distill_embeddings", " 25%", "0.5000", "empty content"):
        assert expected in text, expected


def test_nothing_answering_says_so():
    data = {**_sample(), "workers": [], "ab": [], "training": [], "failures": [],
            "queues": [{"name": "embed.gpu", "depth": None, "consumers": []}]}
    console = Console(record=True, width=150)
    console.print(render(data))
    text = console.export_text()
    assert "0 worker(s) online" in text and "queues unknown" in text
    assert "none answered" in text and "A/B splits" not in text
