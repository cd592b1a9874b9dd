import json
import os
from pathlib import Path

import pytest

from pgfleet.errors import ConfigurationError
from pgfleet.settings import Settings, redact, resolve_urls
from pgfleet.state import STATE_FILE


def test_defaults_and_parsing():
    s = Settings.from_env({"PGFLEET_BATCH_MAX_DOCS": "32", "PGFLEET_POLL_INTERVAL_S": "0.5",
                           "PGFLEET_HOME": "/tmp/x"})
    assert s.batch_max_docs == 32 and s.poll_interval_s == 0.5 and s.home == Path("/tmp/x")
    assert Settings.from_env({}).batch_max_wait_ms == 50


@pytest.mark.parametrize("env, fragment", [
    ({"PGFLEET_BATCH_MAX_DOCS": "many"}, "PGFLEET_BATCH_MAX_DOCS='many' is not a valid int"),
    ({"PGFLEET_BATCH_MAX_DOCS": "0"}, "PGFLEET_BATCH_MAX_DOCS must be at least 1"),
    ({"PGFLEET_DEVICE": "tpu"}, "PGFLEET_DEVICE must be"),
    ({"PGFLEET_DATABASE_URL": "mysql://x"}, "PGFLEET_DATABASE_URL must start with"),
    ({"PGFLEET_REDIS_URL": "http://x"}, "PGFLEET_REDIS_URL must start with"),
    ({"PGFLEET_API_NICE": "20"}, "PGFLEET_API_NICE must be a niceness from 0 to 19"),
    ({"PGFLEET_API_NICE": "-1"}, "PGFLEET_API_NICE must be a niceness from 0 to 19"),
])
def test_bad_settings_give_one_clear_message(env, fragment):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_secrets_are_redacted_from_messages():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"PGFLEET_DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(info.value)
    assert redact("postgresql://u:hunter2@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("redis://localhost:6379/0") == "redis://localhost:6379/0"


@pytest.mark.parametrize("url, redacted", [
    ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
    # unencoded characters that end a URL's authority, or start its query or fragment
    ("postgresql://u:pa/ss@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:pa?ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pa#ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:%2Fp%40ss@h/db", "postgresql://u:***@h/db"),
    ("redis://:r3d/is?#@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://default:s3cret@redis:6380/1", "rediss://default:***@redis:6380/1"),
    # a password as a query parameter, or a keyword DSN
    ("postgresql://u@h/db?password=hunter2", "postgresql://u@h/db?password=***"),
    ("postgresql:///db?host=h&user=u&Password=hunter2&sslmode=require",
     "postgresql:///db?host=h&user=u&Password=***&sslmode=require"),
    ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
    ("postgresql://h/db?sslpassword=hunter2#frag", "postgresql://h/db?sslpassword=***#frag"),
    ("host=h user=u password=hunter2 dbname=d", "host=h user=u password=*** dbname=d"),
    ("host=h password='hun ter2' dbname=d", "host=h password=*** dbname=d"),
])
def test_redact_hides_passwords_in_odd_places(url, redacted):
    assert redact(url) == redacted


def test_redact_keeps_urls_without_secrets_as_they_are():
    for url in ("postgresql://u@h:5432/db", "redis+socket:///tmp/redis.sock",
                "postgresql://h/db?sslmode=require&application_name=a@b"):
        assert redact(url) == url


def test_urls_come_from_env_or_from_a_running_fleet(tmp_path):
    with pytest.raises(ConfigurationError, match="pgfleet up"):
        resolve_urls(Settings(home=tmp_path))
    state = {"pid": os.getpid(), "database_url": "postgresql://a@127.0.0.1:1/p",
             "redis_url": "redis://127.0.0.1:2/0"}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    urls = resolve_urls(Settings(home=tmp_path))
    assert urls.database_url == state["database_url"] and urls.embedded
    explicit = resolve_urls(Settings(home=tmp_path, database_url="postgresql://x@y/z",
                                     redis_url="redis://y/0"))
    assert explicit.database_url == "postgresql://x@y/z" and not explicit.embedded


def test_a_stale_state_file_is_ignored(tmp_path):
    (tmp_path / STATE_FILE).write_text(json.dumps(
        {"pid": 2**22 + 12345, "database_url": "postgresql://a@b/c", "redis_url": "redis://b/0"}))
    with pytest.raises(ConfigurationError):
        resolve_urls(Settings(home=tmp_path))


def test_training_time_limit_and_ab_wait_settings():
    from workers.tasks.train import celery_time_limit_s

    settings = Settings.from_env({"PGFLEET_TRAINING_TIME_LIMIT_S": "600",
                                  "PGFLEET_TRAINING_STOP_GRACE_S": "5",
                                  "PGFLEET_AB_LOCK_WAIT_S": "2.5"})
    assert (settings.training_time_limit_s, settings.training_stop_grace_s,
            settings.ab_lock_wait_s) == (600.0, 5.0, 2.5)
    # Celery's hard limit is only a backstop, well past the run's own limit and grace
    assert celery_time_limit_s(settings) > 600 + 5
    assert celery_time_limit_s(Settings(training_time_limit_s=0)) is None
    for name, value in (("TRAINING_TIME_LIMIT_S", "-1"), ("TRAINING_STOP_GRACE_S", "0"),
                        ("AB_LOCK_WAIT_S", "nan")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({f"PGFLEET_{name}": value})
