"""Inference cache maintenance against the real PostgreSQL: pruning by age and hits, the
size bound, statistics, the `pgfleet cache` commands, and Celery beat sending the prune to
a real CPU worker."""

from __future__ import annotations

import json

import pytest

from pgfleet.embedding import cache
from pgfleet.embedding.cache import CachePolicy
from tests.conftest import ROOT, Proc, run_cli, wait_until

pytestmark = pytest.mark.integration

DAY_S = 86400


def add_entry(conn, key: str, *, age_days: float, hits: int = 0,
              last_hit_days: float | None = None, version_id: int = 1) -> None:
    """A cache row created ``age_days`` ago (last hit ``last_hit_days`` ago, if any)."""
    conn.execute(
        "INSERT INTO model_cache (version_id, input_hash, embedding, hits, created_at, "
        "last_hit_at) VALUES (%s, sha256(convert_to(%s, 'UTF8')), '[1,2,3]', %s, "
        "now() - make_interval(secs => %s), "
        "now() - make_interval(secs => %s))",
        (version_id, key, hits, age_days * DAY_S,
         last_hit_days * DAY_S if last_hit_days is not None else None))


def keys(conn) -> set[str]:
    rows = conn.execute("SELECT encode(input_hash, 'hex') FROM model_cache").fetchall()
    return {r[0] for r in rows}


def hex_of(conn, *names: str) -> set[str]:
    return {conn.execute("SELECT encode(sha256(convert_to(%s, 'UTF8')), 'hex')",
                         (n,)).fetchone()[0] for n in names}


DEFAULT = CachePolicy(max_age_s=30 * DAY_S, min_hits=5, max_entries=0)


def test_prune_removes_entries_unused_for_the_age_with_few_hits(scratch):
    add_entry(scratch, "old-unhit", age_days=40)
    add_entry(scratch, "old-4-hits", age_days=40, hits=4, last_hit_days=35)
    add_entry(scratch, "old-5-hits", age_days=40, hits=5, last_hit_days=35)       # enough hits
    add_entry(scratch, "old-but-hit-lately", age_days=40, hits=2, last_hit_days=1)  # in use
    add_entry(scratch, "new-unhit", age_days=2)
    report = cache.prune(scratch, DEFAULT)
    assert report.unused == 2 and report.evicted == 0 and report.entries == 3
    assert keys(scratch) == hex_of(scratch, "old-5-hits", "old-but-hit-lately", "new-unhit")
    # idempotent
    assert cache.prune(scratch, DEFAULT).unused == 0


def test_prune_works_in_chunks(scratch):
    for i in range(25):
        add_entry(scratch, f"stale-{i}", age_days=31)
    report = cache.prune(scratch, DEFAULT, chunk=10)
    assert report.unused == 25 and keys(scratch) == set()


def test_the_size_bound_evicts_the_least_useful_first(scratch):
    add_entry(scratch, "proven-old", age_days=20, hits=50, last_hit_days=19)
    add_entry(scratch, "proven-recent", age_days=20, hits=9, last_hit_days=0.1)
    add_entry(scratch, "unproven-old", age_days=10, hits=1, last_hit_days=9)
    add_entry(scratch, "unproven-mid", age_days=5)
    add_entry(scratch, "unproven-new", age_days=0.01)
    policy = CachePolicy(max_age_s=30 * DAY_S, min_hits=5, max_entries=3)
    report = cache.prune(scratch, policy, chunk=1)
    assert report.unused == 0 and report.evicted == 2 and report.entries == 3
    assert keys(scratch) == hex_of(scratch, "proven-old", "proven-recent", "unproven-new")
    policy = CachePolicy(max_age_s=30 * DAY_S, min_hits=5, max_entries=1)
    cache.prune(scratch, policy)
    # among proven entries, the one unused the longest goes first
    assert keys(scratch) == hex_of(scratch, "proven-recent")


def test_stats_count_entries_hits_prunable_and_the_recent_hit_ratio(scratch):
    add_entry(scratch, "a", age_days=40)
    add_entry(scratch, "b", age_days=1, hits=7, last_hit_days=0.5)
    scratch.execute(
        "INSERT INTO inference_logs (version_id, task, latency_ms, batch_size, cache_hits, "
        "model_calls, created_at) VALUES "
        "(1, 'embed', 10, 8, 2, 6, now()), (1, 'search', 3, 1, 1, 0, now()), "
        "(1, 'embed', 10, 100, 100, 0, now() - interval '2 hours')")
    data = cache.stats(scratch, DEFAULT)
    [v1] = data["versions"]
    assert (v1["entries"], v1["hits"], v1["prunable"]) == (2, 7, 1)
    assert v1["window_lookups"] == 9 and v1["window_hits"] == 3
    assert v1["hit_ratio"] == pytest.approx(3 / 9)
    assert v1["oldest_entry_s"] == pytest.approx(40 * DAY_S, rel=0.01)
    assert data["entries"] == 2 and data["hit_ratio"] == pytest.approx(3 / 9)
    assert data["size_bytes"] > 0


def test_stats_of_an_empty_cache(scratch):
    data = cache.stats(scratch, DEFAULT)
    assert data["entries"] == 0 and data["hit_ratio"] is None
    assert [v["version"] for v in data["versions"]] == ["v1"]


def test_cache_commands(services, scratch, scratch_url):
    add_entry(scratch, "stale", age_days=31)
    add_entry(scratch, "kept", age_days=31, hits=6, last_hit_days=31)
    env = services.env(PGFLEET_DATABASE_URL=scratch_url)
    stats = run_cli("cache", "stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["entries"] == 2 and data["prunable"] == 1
    table = run_cli("cache", "stats", env=env)
    assert table.returncode == 0 and "v1" in table.stdout and "2 entries" in table.stdout
    pruned = run_cli("cache", "prune", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout) == {"unused": 1, "evicted": 0, "entries": 1}
    bounded = run_cli("cache", "prune", env=dict(env, PGFLEET_CACHE_MAX_ENTRIES="0"))
    assert bounded.returncode == 0 and "pruned 0 unused" in bounded.stdout


@pytest.mark.parametrize("name, value, fragment", [
    ("PGFLEET_CACHE_MIN_HITS", "-1", "PGFLEET_CACHE_MIN_HITS must not be negative"),
    ("PGFLEET_CACHE_MAX_AGE_S", "soon", "PGFLEET_CACHE_MAX_AGE_S='soon' is not a valid float"),
    ("PGFLEET_CACHE_MAX_ENTRIES", "1e6", "PGFLEET_CACHE_MAX_ENTRIES='1e6' is not a valid int"),
])
def test_bad_cache_settings_give_one_clear_line(services, name, value, fragment):
    result = run_cli("cache", "prune", env=services.env(**{name: value}))
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_beat_sends_the_prune_to_a_cpu_worker_and_keeps_its_file_in_home(
        services, scratch, scratch_url, tmp_path):
    from pgfleet.ops.supervisor import fleet_children

    add_entry(scratch, "stale", age_days=31)
    add_entry(scratch, "fresh", age_days=1)
    home = tmp_path / "home"
    # a Redis database of its own: no other worker takes the prune
    redis_url = services.redis_url.rsplit("/", 1)[0] + "/5"
    env = services.env(PGFLEET_DATABASE_URL=scratch_url, PGFLEET_REDIS_URL=redis_url,
                       PGFLEET_HOME=str(home), PGFLEET_CACHE_PRUNE_INTERVAL_S="1")
    specs = {s.name: s for s in fleet_children(flower_port=None)}
    procs = [Proc(name, specs[name].argv, env, tmp_path).start()
             for name in ("beat", "worker-cpu")]
    try:
        wait_until(lambda: keys(scratch) == hex_of(scratch, "fresh"), 90, interval_s=0.5,
                   message="beat's prune to run on the CPU worker")
        assert any(home.glob("celerybeat-schedule*")), list(home.iterdir())
    finally:
        for proc in procs:
            proc.stop()
    assert not any(ROOT.glob("celerybeat-schedule*"))
    assert "pgfleet.prune_cache" in procs[1].log()
