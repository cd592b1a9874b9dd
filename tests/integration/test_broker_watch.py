"""The producer notices a broker that lost everything it held (restarted without its data,
or flushed), and only that."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_broker_that_lost_its_data_is_noticed_once(tmp_path):
    import redis

    from pgfleet.ops.services import EmbeddedRedis
    from producers.broker import BrokerWatch

    server = EmbeddedRedis(tmp_path, password="w4tch")
    url = server.start()
    watch = BrokerWatch(url, check_every_s=0)
    other = BrokerWatch(url, check_every_s=0)  # a second producer
    try:
        assert watch.lost_everything() is False  # the first look only sets the marker
        assert other.lost_everything() is False
        assert watch.lost_everything() is False
        server.stop()
        assert watch.lost_everything() is False  # down: nothing to say yet
        server.start()
        # something was published to the new server before the producer looked again
        client = redis.Redis.from_url(url)
        client.lpush("embed.gpu", b"{}")
        assert watch.lost_everything() is True
        assert watch.lost_everything() is False  # said once
        assert other.lost_everything() is True  # the marker the first one re-created is new

        # a flush loses everything too
        client.flushall()
        assert watch.lost_everything() is True

        # a restart that restored its data from disk restored its messages: left alone
        client.save()
        client.close()
        server.stop()
        server.start()
        assert watch.lost_everything() is False
    finally:
        watch.close()
        other.close()
        server.stop()
