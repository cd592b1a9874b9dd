"""The ``pgfleet`` command: everything a person does by hand.

Every command run with the same ``PGFLEET_HOME`` talks to the fleet ``pgfleet up`` started
there, unless ``PGFLEET_DATABASE_URL`` / ``PGFLEET_REDIS_URL`` point elsewhere.

This module is the root group and the list of its commands; ``pgfleet NAME`` lives in
``pgfleet/cli/NAME.py`` (``pgfleet train text2sql`` and ``distill-text2sql`` in
``train_text2sql.py``). Command modules import only :mod:`pgfleet.cli.output` and
:mod:`pgfleet.cli.jobs`, never each other; only this module imports them.
"""

from __future__ import annotations

import click

from pgfleet.cli import (
    ab,
    beat,
    bench,
    cache,
    db,
    failures,
    flower,
    load,
    metrics,
    models,
    search,
    sql,
    status,
    text2sql,
    train,
    train_text2sql,
    up,
    verify,
)
from pgfleet.cli.output import PgfleetGroup, setup_logging


@click.group(cls=PgfleetGroup)
@click.option("--log-level", default="INFO", show_default=True, envvar="PGFLEET_LOG_LEVEL")
def main(log_level: str) -> None:
    """pgfleet: automatic embeddings, search and model versions on PostgreSQL."""
    setup_logging(log_level.upper())


for _command in (up.up, flower.flower, db.db, models.models, failures.failures,
                 verify.verify, load.load, search.search, ab.ab, bench.bench, train.train,
                 sql.sql, status.status, text2sql.text2sql, cache.cache, beat.beat,
                 metrics.metrics):
    main.add_command(_command)
train.train.add_command(train_text2sql.train_text2sql)
train.train.add_command(train_text2sql.distill_text2sql)
