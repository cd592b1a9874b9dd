"""``pgfleet up``: the whole fleet on this machine, and with ``--demo`` sample docs loaded
and their embedding shown as it progresses."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from pgfleet.cli.output import console, out
from pgfleet.errors import PgfleetError

if TYPE_CHECKING:
    import psycopg


@click.command()
@click.option("--demo", is_flag=True, help="load sample docs and show embedding progress")
@click.option("--demo-docs", default=500, show_default=True,
              help="documentation paragraphs to load with --demo, besides the samples")
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="the Prometheus endpoint on PGFLEET_METRICS_PORT")
@click.option("--api/--no-api", default=True, show_default=True,
              help="the HTTP API on PGFLEET_API_PORT (pgfleet serve)")
def up(demo: bool, demo_docs: int, flower: bool, metrics: bool, api: bool) -> None:
    """Start the fleet: embedded PostgreSQL and Redis when no URLs are set, migrations,
    a producer, one worker per queue, Celery beat, Flower, the Prometheus endpoint and the
    HTTP API.
    Ctrl-C stops everything."""
    from pgfleet.cli import context
    from pgfleet.ops import fleet

    conf = context.settings()
    on_ready = _demo(conf, demo_docs) if demo else None
    # the generated Flower password goes to a terminal, never to a file (a log)
    sys.exit(fleet.up(conf, flower=flower, metrics=metrics, api=api, on_ready=on_ready,
                      announce=lambda text: out.print(text, highlight=False, soft_wrap=True),
                      show_secrets=sys.stdout.isatty()))


def _demo(conf, extra_docs: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    def on_ready(_supervisor):
        from pgfleet import corpus
        from pgfleet.cli import context
        from pgfleet.embedding import loader
        from pgfleet.models import versions

        docs = [(d["content"], d.get("metadata", {})) for d in corpus.sample_docs()]
        docs += [(p, {"source": "python docstrings"})
                 for p in corpus.stdlib_paragraphs(extra_docs)]
        total = {"target": 0, "baseline": 0}

        def load():
            with context.connection(conf, wait_s=10) as conn:
                total["baseline"] = _one(conn, "docs_count")["count"]
                total["target"] = total["baseline"] + len(docs)
                for start in range(0, len(docs), 200):
                    loader.insert_batch(conn, docs[start:start + 200])
            logging.getLogger("pgfleet.demo").info(
                "demo: inserted %d docs; try: pgfleet search \"how do I make search faster\"",
                len(docs))

        threading.Thread(target=load, daemon=True, name="demo-loader").start()
        progress = Progress("[progress.description]{task.description}", BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        task = progress.add_task("embedding demo docs", total=len(docs))
        progress.start()
        last = [0.0]

        def tick():
            if time.monotonic() - last[0] < 0.5 or total["target"] == 0:
                return
            last[0] = time.monotonic()
            try:
                with context.connection(conf) as conn:
                    active = versions.find(conn, "embedding")
                    embedded = _one(conn, "version_coverage",
                                    {"version_id": active.id})["embedded"]
            except PgfleetError:
                return
            progress.update(task, completed=max(0, min(len(docs), embedded - total["baseline"])))
            if embedded - total["baseline"] >= len(docs):
                progress.stop()
                total["target"] = 0
        return tick

    return on_ready


def _one(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    """The row of a query that always returns one (a count)."""
    from pgfleet import db

    row = db.fetch_one(conn, query, params)
    if row is None:
        raise AssertionError(f"{query} returned no row")
    return row
