"""``pgfleet beat``: Celery beat for this fleet, its schedule file under PGFLEET_HOME."""

from __future__ import annotations

import os
import sys

import click

from workers.queues import BEAT_SCHEDULE_FILE


@click.command("beat")
def beat() -> None:
    """Run Celery beat: it sends the fleet's scheduled tasks (inference cache pruning every
    PGFLEET_CACHE_PRUNE_INTERVAL_S). Run exactly one per fleet. Its schedule file is
    $PGFLEET_HOME/celerybeat-schedule, never in the working directory."""
    from pgfleet.cli import context

    conf = context.settings()
    urls = context.urls(conf)
    home = conf.home.resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from pgfleet.errors import ConfigurationError

        raise ConfigurationError(f"cannot create PGFLEET_HOME {home} for beat's schedule "
                                 f"file: {exc.strerror}") from None
    env = dict(os.environ, PGFLEET_REDIS_URL=urls.redis_url,
               PGFLEET_DATABASE_URL=urls.database_url, PGFLEET_HOME=str(home))
    argv = [sys.executable, "-m", "celery", "-A", "workers", "beat",
            "--schedule", str(home / BEAT_SCHEDULE_FILE), "--loglevel", "INFO"]
    os.execve(sys.executable, argv, env)
