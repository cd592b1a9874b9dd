"""Model versions without a database: the tie rule, the label policies, coverage and the
inference log's row."""

import hashlib

from pgfleet.models import inference_logs, splits, stats, versions


def _version(id_: int, traffic: int) -> versions.Version:
    return versions.Version(id_, "m", f"v{id_}", "embedding", "torch", "/m", 8, 32, "ready",
                            traffic, True)


def test_the_most_traffic_wins_and_the_oldest_wins_a_tie():
    def traffic(v):
        return v.traffic_percent

    assert splits.leader([_version(1, 0), _version(2, 50), _version(3, 50)], traffic).id == 2
    assert splits.leader([_version(1, 20), _version(2, 80)], traffic).id == 2
    assert splits.leader([], traffic) is None


def test_an_embedding_version_gives_its_engine_spec():
    spec = _version(4, 100).spec
    assert (spec.version_id, spec.label, spec.dimensions, spec.max_seq_length) == \
        (4, "m@v4", 8, 32)


def test_labels_from_a_base_and_numbered_labels_take_the_first_free_one():
    assert versions.label_from_base([], "v1-ft") == "v1-ft"
    assert versions.label_from_base(["v1", "v1-ft", "v1-ft-2"], "v1-ft") == "v1-ft-3"
    assert versions.numbered_label([]) == "v1"
    assert versions.numbered_label(["v1", "v2"]) == "v3"
    assert versions.numbered_label(["v1", "v3"]) == "v4"  # one more than the count, if free
    assert versions.numbered_label(["v2", "v3"]) == "v4"


def test_coverage_is_clamped_and_undefined_without_docs():
    assert stats.coverage(0, 0) is None
    assert stats.coverage(1, 3) == 1 / 3
    assert stats.coverage(5, 4) == 1.0


def test_each_task_logs_its_request_key_as_it_always_has():
    search = inference_logs.row("search", version_id=2, assigned_version_id=3, latency_ms=1.5,
                                cache_hits=1, model_calls=0, key="user-7", results=(4, 5))
    assert search["request_key"] == hashlib.sha256(b"user-7").hexdigest()[:16]
    assert search["results"] == [4, 5] and search["worker"] is None
    assert inference_logs.row("search", version_id=2, latency_ms=1.0)["request_key"] is None
    text2sql = inference_logs.row("text2sql", version_id=2, latency_ms=1.0, key="how many?")
    assert text2sql["request_key"] == hashlib.sha256(b"how many?").hexdigest()[:32]
    assert (text2sql["batch_size"], text2sql["cache_hits"], text2sql["model_calls"]) == (1, 0, 1)
