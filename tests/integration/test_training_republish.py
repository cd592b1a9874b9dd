"""A training run whose message the broker lost (Redis restarted without its data) is
published again by the producer, once, with its own task id; one whose message is still
waiting is left alone. Real PostgreSQL and Redis (a Redis database of its own, so no
worker of the other tests takes these messages)."""

from __future__ import annotations

import json

import pytest

from pgfleet import db
from tests.conftest import create_database

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(services):
    import redis

    from pgfleet.settings import Settings
    from workers.app import create_app

    url = create_database(services, "pgfleet_republish")
    redis_url = services.redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    app = create_app(Settings(database_url=url, redis_url=redis_url, home=services.home))
    pool = db.open_pool(url, min_size=1, max_size=2, name="pgfleet-test-republish")
    pool.open(wait=True)
    with db.connect(url, autocommit=True) as conn:
        yield conn, pool, app, redis_url, client
    pool.close()
    app.close()
    client.flushdb()
    client.close()


def _messages(client) -> list[dict]:
    return [json.loads(m) for m in client.lrange("training", 0, -1)]


def test_a_queued_run_whose_message_was_lost_is_published_again_once(setup):
    from pgfleet.training import runs
    from producers.reconcile import republish_lost_runs

    conn, pool, app, redis_url, client = setup
    lost = runs.create(conn, "quantize", {"from_version": "v1", "sample": 10})
    runs.set_task_id(conn, lost, "lost-task-id")
    waiting = runs.create(conn, "quantize", {"from_version": "v1", "sample": 20})
    sent = app.send_task("quantize", kwargs={"run_id": waiting, "from_version": "v1",
                                             "sample": 20})
    runs.set_task_id(conn, waiting, sent.id)
    fresh = runs.create(conn, "quantize", {"from_version": "v1"})
    runs.set_task_id(conn, fresh, "fresh-task-id")
    conn.execute("UPDATE training_runs SET created_at = now() - interval '10 minutes' "
                 "WHERE id = ANY(%s)", ([lost, waiting],))
    assert [m["headers"]["id"] for m in _messages(client)] == [sent.id]

    assert republish_lost_runs(pool, app, redis_url, lost_after_s=120) == [lost]
    messages = {m["headers"]["id"]: m for m in _messages(client)}
    assert set(messages) == {sent.id, "lost-task-id"}
    republished = messages["lost-task-id"]["headers"]
    assert republished["task"] == "quantize"
    assert f"'run_id': {lost}" in republished["kwargsrepr"]
    # its message is back: the next pass publishes nothing; a young run is never touched
    assert republish_lost_runs(pool, app, redis_url, lost_after_s=120) == []
    assert len(_messages(client)) == 2


def test_when_redis_cannot_be_read_nothing_is_published(setup):
    from pgfleet.training import runs
    from producers.broker import task_ids
    from producers.reconcile import republish_lost_runs

    conn, pool, app, _, client = setup
    run = runs.create(conn, "quantize", {})
    runs.set_task_id(conn, run, "some-task-id")
    conn.execute("UPDATE training_runs SET created_at = now() - interval '1 hour'")
    assert task_ids("redis://127.0.0.1:1/0", "training") is None
    assert republish_lost_runs(pool, app, "redis://127.0.0.1:1/0", lost_after_s=60) == []
    assert _messages(client) == []


def test_a_message_that_is_not_celerys_is_skipped_with_a_warning(setup, caplog):
    from producers.broker import task_ids

    _, _, app, redis_url, client = setup
    sent = app.send_task("quantize", kwargs={"run_id": 1, "from_version": "v1"})
    client.lpush("training", b"not json", b'"a string"', b"[1, 2]")
    client.hset("unacked", "tag", b"{broken")
    with caplog.at_level("WARNING", logger="producers.broker"):
        assert task_ids(redis_url, "training") == {sent.id}
    assert "4 message(s) in Redis for the training queue are not Celery messages" \
        in caplog.text
