"""The ``pgfleet`` command, the top layer: everything a person does by hand.

Every command run with the same ``PGFLEET_HOME`` talks to the fleet ``pgfleet up`` started
there, unless ``PGFLEET_DATABASE_URL`` / ``PGFLEET_REDIS_URL`` point elsewhere. This module
is the root group and the list of its commands; ``pgfleet NAME`` lives in
``pgfleet/cli/NAME.py``, and the ``pgfleet train`` job commands are made from
:data:`pgfleet.training.specs.SPECS`. A command module may import every layer below
(``pgfleet.ops``, :mod:`producers`, :mod:`workers`, the library, :mod:`schema`) and, of its
siblings, only ``context``, ``output`` and ``jobs``; only this module imports the commands,
and no other package imports this one.
"""

from __future__ import annotations

import click

from pgfleet.cli import (
    ab,
    api_key,
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
    serve,
    source,
    sql,
    status,
    text2sql,
    train,
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
                 metrics.metrics, serve.serve, api_key.api_key, source.source):
    main.add_command(_command)
