"""Inference cache maintenance: the pure parts, its settings and its schedule."""

import pytest

from pgfleet.embedding.cache import CachePolicy, eviction_plan, hit_ratio
from pgfleet.errors import ConfigurationError
from pgfleet.settings import Settings
from workers.queues import QUEUE_CPU, TASK_PRUNE_CACHE


def test_eviction_plan_deletes_the_excess_in_chunks():
    assert eviction_plan(25, 3, chunk=10) == [10, 10, 2]
    assert eviction_plan(3, 3) == [] and eviction_plan(2, 3) == []
    assert eviction_plan(10**9, 0) == []  # 0: no bound
    with pytest.raises(ValueError):
        eviction_plan(5, 1, chunk=0)


def test_hit_ratio():
    assert hit_ratio(3, 12) == 0.25
    assert hit_ratio(0, 0) is None


def test_policy_defaults_and_settings():
    policy = CachePolicy.from_settings(Settings.from_env({}))
    assert policy == CachePolicy(max_age_s=30 * 86400.0, min_hits=5, max_entries=1_000_000)
    s = Settings.from_env({"PGFLEET_CACHE_MAX_AGE_S": "3600", "PGFLEET_CACHE_MIN_HITS": "0",
                           "PGFLEET_CACHE_MAX_ENTRIES": "0",
                           "PGFLEET_CACHE_PRUNE_INTERVAL_S": "60"})
    assert (s.cache_max_age_s, s.cache_min_hits, s.cache_max_entries,
            s.cache_prune_interval_s) == (3600.0, 0, 0, 60.0)


@pytest.mark.parametrize("env, fragment", [
    ({"PGFLEET_CACHE_MIN_HITS": "-1"}, "PGFLEET_CACHE_MIN_HITS must not be negative"),
    ({"PGFLEET_CACHE_MAX_ENTRIES": "-5"}, "PGFLEET_CACHE_MAX_ENTRIES must not be negative"),
    ({"PGFLEET_CACHE_MAX_AGE_S": "0"}, "PGFLEET_CACHE_MAX_AGE_S must be a positive number"),
    ({"PGFLEET_CACHE_MAX_AGE_S": "inf"}, "PGFLEET_CACHE_MAX_AGE_S must be a positive number"),
    ({"PGFLEET_CACHE_PRUNE_INTERVAL_S": "nan"}, "PGFLEET_CACHE_PRUNE_INTERVAL_S must be"),
    ({"PGFLEET_CACHE_MAX_ENTRIES": "lots"}, "PGFLEET_CACHE_MAX_ENTRIES='lots' is not a valid"),
    ({"PGFLEET_FLOWER_PORT": "70000"}, "PGFLEET_FLOWER_PORT must be a port number"),
])
def test_bad_cache_settings(env, fragment):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_beat_schedules_the_prune_on_the_cpu_queue_with_its_file_under_home(tmp_path):
    from workers.app import create_app

    app = create_app(Settings(home=tmp_path, cache_prune_interval_s=120.0))
    [entry] = app.conf.beat_schedule.values()
    assert entry["task"] == TASK_PRUNE_CACHE and entry["schedule"] == 120.0
    assert entry["options"] == {"queue": QUEUE_CPU, "expires": 120.0}
    assert app.conf.beat_schedule_filename.startswith(str(tmp_path))
    assert app.amqp.router.route({}, TASK_PRUNE_CACHE)["queue"].name == QUEUE_CPU
    assert TASK_PRUNE_CACHE in app.tasks or "workers.tasks.maintenance" in app.conf.include


def test_the_fleet_runs_one_beat():
    from pgfleet.ops.supervisor import fleet_children

    names = [s.name for s in fleet_children(flower_port=None)]
    assert names.count("beat") == 1
    [spec] = [s for s in fleet_children(flower_port=None) if s.name == "beat"]
    assert spec.argv[-3:] == ["-m", "pgfleet.cli", "beat"]
    assert "beat" not in [s.name for s in fleet_children(flower_port=None, beat=False)]
