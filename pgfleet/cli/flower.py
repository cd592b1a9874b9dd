"""``pgfleet flower``: Flower for this fleet, never without basic authentication."""

from __future__ import annotations

import sys

import click

from pgfleet.errors import ConfigurationError


@click.command()
@click.option("--port", default=None, type=int, help="default: PGFLEET_FLOWER_PORT")
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int | None, address: str) -> None:
    """Run Flower for this fleet, always behind basic authentication
    (PGFLEET_FLOWER_USER, default admin, and PGFLEET_FLOWER_PASSWORD)."""
    import os

    from pgfleet.cli import context

    conf = context.settings()
    password = os.environ.get("PGFLEET_FLOWER_PASSWORD")
    if not password:
        raise ConfigurationError("Flower never runs without authentication: set "
                                 "PGFLEET_FLOWER_PASSWORD (and PGFLEET_FLOWER_USER)")
    user = os.environ.get("PGFLEET_FLOWER_USER") or "admin"
    urls = context.urls(conf)
    env = dict(os.environ, FLOWER_BASIC_AUTH=f"{user}:{password}",
               PGFLEET_REDIS_URL=urls.redis_url, PGFLEET_DATABASE_URL=urls.database_url)
    argv = [sys.executable, "-m", "celery", "-A", "workers", "flower",
            f"--port={port if port is not None else conf.flower_port}", f"--address={address}"]
    os.execve(sys.executable, argv, env)
