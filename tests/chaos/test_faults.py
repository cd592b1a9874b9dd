"""Fault tests: real processes, real PostgreSQL and Redis, real damage, bounded in time.

Each inserts, updates and deletes docs while doing the damage, waits for the fleet to settle
and checks the end state (see ``settle_and_verify``). Figures go to
``test-artifacts/chaos-report.jsonl``.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.chaos.conftest import FLEET_ENV, Load, Outcome, record, settle_and_verify
from tests.conftest import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


def _run(fresh, name: str, duration_s: float, damage, finish=None, **extra) -> Outcome:
    load = Load(fresh, duration_s)
    load.start()
    faults = damage(load)
    load.join(duration_s + 60)
    outcome = Outcome(name, faults=faults, ops=load.ops, extra=extra)
    settle_and_verify(fresh, outcome)
    if finish is not None:
        finish(outcome)
    record(outcome)
    return outcome


def test_sigkill_the_pool_process_mid_batch_three_times(fresh):
    def damage(load):
        kills = 0
        for _ in range(3):
            time.sleep(2.5)
            pool = fresh.pool_process()
            pool.send_signal(signal.SIGKILL)
            kills += 1
            fresh.pool_process(other_than=pool.pid)  # its replacement
        return kills

    _run(fresh, "pool process SIGKILL x3", 10, damage)
    assert "died" in fresh.logs() and "republishing them" in fresh.logs()


def test_sigkill_the_worker_main_process_is_restarted_and_its_work_done(fresh):
    killed_at: list[float] = []

    def damage(load):
        time.sleep(3)
        fresh.process("worker-gpu").send_signal(signal.SIGKILL)
        killed_at.append(time.monotonic())
        return 1

    def finish(outcome):
        outcome.extra["kill_to_settled_s"] = round(time.monotonic() - killed_at[0], 1)

    outcome = _run(fresh, "worker main SIGKILL", 6, damage, finish,
                   requeue_after_s=float(FLEET_ENV["PGFLEET_REQUEUE_AFTER_S"]))
    # bounded by the setting (republish after PGFLEET_REQUEUE_AFTER_S) plus a restart with
    # backoff and the model load, not by Redis' default one-hour visibility timeout
    assert outcome.extra["kill_to_settled_s"] < 60, outcome.extra


def test_kill_and_restart_redis_losing_everything_it_held(fresh):
    def damage(load):
        time.sleep(3)
        fresh.redis.stop()  # no persistence: every queued and unacked message is gone
        time.sleep(1)
        fresh.redis.start()
        return 1

    _run(fresh, "redis kill + restart", 8, damage)


def test_kill_the_producer_while_inserts_continue(fresh):
    def damage(load):
        kills = 0
        for _ in range(2):
            time.sleep(2.5)
            fresh.process("producer").send_signal(signal.SIGKILL)
            kills += 1
        return kills

    _run(fresh, "producer SIGKILL x2", 8, damage)


def test_restart_postgresql_mid_run(fresh):
    def damage(load):
        time.sleep(3)
        fresh.pg.stop(mode="fast")
        time.sleep(1)
        fresh.pg.start()
        return 1

    outcome = _run(fresh, "postgresql restart", 8, damage)
    assert outcome.docs > 0


def test_the_final_vector_matches_the_final_content_under_concurrent_updates(fresh):
    with fresh.connect() as conn:
        ids = [r[0] for r in conn.execute(
            "INSERT INTO docs (content) SELECT 'seed ' || g FROM generate_series(1, 10) g "
            "RETURNING id")]
    updates = [0]

    def hammer():
        with fresh.connect() as conn:
            for i in range(300):
                conn.execute("UPDATE docs SET content = %s WHERE id = %s",
                             (f"version {i} of doc, words {i % 7}", ids[i % len(ids)]))
                updates[0] += 1

    def damage(load):
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return updates[0]

    _run(fresh, "concurrent updates of the same docs", 4, damage)


def test_delete_docs_while_their_batch_is_being_encoded(fresh):
    from pgfleet.corpus import stdlib_paragraphs

    texts = [f"[delete test] {t}" for t in stdlib_paragraphs(96)]

    def damage(load):
        with fresh.connect() as conn:
            ids = [r[0] for r in conn.execute(
                "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (texts,))]
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pending_embeddings WHERE started_at IS NOT NULL "
                "AND doc_id = ANY(%s)", (ids,)).fetchone()[0] > 0, 30,
                interval_s=0.01, message="a batch being encoded")
            deleted = conn.execute("DELETE FROM docs WHERE id = ANY(%s)", (ids[::2],)).rowcount
        return deleted

    _run(fresh, "deletes during encoding", 3, damage)


def test_sigterm_everything_during_load_loses_nothing(fresh):
    timeout_s = float(FLEET_ENV["PGFLEET_SHUTDOWN_TIMEOUT_S"])
    stop_s: list[float] = []

    def damage(load):
        time.sleep(3)
        stop_s.append(fresh.stop_fleet())  # SIGTERM: Celery's warm shutdown
        fresh.redis.stop()
        fresh.pg.stop()
        fresh.pg.start()
        fresh.redis.start()
        fresh.start_fleet()
        return 1

    def finish(outcome):
        outcome.extra["graceful_stop_s"] = round(stop_s[0], 2)

    _run(fresh, "SIGTERM everything", 6, damage, finish, shutdown_timeout_s=timeout_s)
    assert stop_s[0] < timeout_s, stop_s
    assert "did not stop within" not in fresh.logs()
