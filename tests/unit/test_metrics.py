"""The Prometheus endpoint's pure parts: buckets, coverage, running totals."""

from collections import Counter

import pytest

from pgfleet.errors import ConfigurationError
from pgfleet.ops.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_S,
    LogTotals,
    coverage,
    latency_buckets,
    size_buckets,
)
from pgfleet.settings import Settings


def test_size_buckets_are_cumulative_and_inclusive():
    buckets = dict(size_buckets(Counter({1: 2, 64: 3, 65: 1, 10_000: 1})))
    assert buckets["1.0"] == 2 and buckets["32.0"] == 2
    assert buckets["64.0"] == 5 and buckets["128.0"] == 6
    assert buckets[f"{BATCH_SIZE_BUCKETS[-1]}.0"] == 6 and buckets["+Inf"] == 7


def test_latency_buckets_from_width_bucket_indexes():
    # index 0: below 5 ms; index 2: [10 ms, 25 ms); the last index: at or above 60 s
    counts = Counter({0: 1, 2: 4, len(LATENCY_BUCKETS_S): 2})
    buckets = dict(latency_buckets(counts))
    assert buckets["0.005"] == 1 and buckets["0.01"] == 1 and buckets["0.025"] == 5
    assert buckets["60.0"] == 5 and buckets["+Inf"] == 7
    assert list(buckets) == [*map(str, LATENCY_BUCKETS_S), "+Inf"]  # Go's float format


def test_coverage():
    assert coverage(3, 4) == 0.75
    assert coverage(0, 0) == 1.0
    assert coverage(5, 4) == 1.0  # a vector counted while its doc was being deleted


def test_log_totals_accumulate_embed_batches_and_cache_lookups():
    totals = LogTotals()
    totals.add([
        {"version_id": 1, "task": "embed", "batch_size": 64, "latency_bucket": 5, "n": 3,
         "latency_ms": 900.0, "cache_hits": 10},
        {"version_id": 1, "task": "search", "batch_size": 1, "latency_bucket": 1, "n": 4,
         "latency_ms": 40.0, "cache_hits": 1},
    ], up_to="t1")
    totals.add([{"version_id": 1, "task": "embed", "batch_size": 2, "latency_bucket": 1,
                 "n": 1, "latency_ms": 100.0, "cache_hits": 0}], up_to="t2")
    v1 = totals.versions[1]
    assert (v1.batches, v1.docs, v1.lookups, v1.cache_hits) == (4, 194, 198, 11)
    assert v1.batch_sizes == Counter({64: 3, 2: 1})
    assert v1.latency_buckets == Counter({5: 3, 1: 1})
    assert abs(v1.latency_sum_s - 1.0) < 1e-9
    assert totals.up_to == "t2"


def test_metrics_port_setting():
    assert Settings.from_env({}).metrics_port == 5556
    assert Settings.from_env({"PGFLEET_METRICS_PORT": "0"}).metrics_port == 0
    for bad, fragment in (("-1", "must be a port number"), ("http", "is not a valid int")):
        with pytest.raises(ConfigurationError, match=fragment):
            Settings.from_env({"PGFLEET_METRICS_PORT": bad})


def test_up_serves_metrics_as_a_child():
    from pgfleet.ops.supervisor import fleet_children

    [spec] = [s for s in fleet_children(flower_port=None, metrics_port=9999)
              if s.name == "metrics"]
    assert spec.argv[-3:] == ["pgfleet.cli", "metrics", "--port=9999"]
    assert "metrics" not in [s.name for s in fleet_children(flower_port=None)]
