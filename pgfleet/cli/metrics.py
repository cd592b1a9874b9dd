"""``pgfleet metrics``: the fleet's Prometheus endpoint, standalone (see
:mod:`pgfleet.ops.metrics`). ``pgfleet up`` runs the same command as a child."""

from __future__ import annotations

import logging
import signal
import threading

import click

logger = logging.getLogger(__name__)


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="default: PGFLEET_METRICS_PORT (0: any free port)")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="0.0.0.0 to be scraped from other machines")
@click.option("--once", is_flag=True, help="print the metrics once and exit")
def metrics(port: int | None, address: str, once: bool) -> None:
    """Serve the fleet's Prometheus metrics at /metrics: pending docs, oldest pending age,
    coverage and failures per version, embedding batch size and latency histograms, cache
    hit ratio, training runs by status. Read from PostgreSQL at every scrape."""
    from prometheus_client import generate_latest

    from pgfleet.cli import context
    from pgfleet.embedding.cache import CachePolicy
    from pgfleet.errors import DatabaseUnavailable
    from pgfleet.ops import metrics as metrics_mod

    conf = context.settings()
    urls = context.urls(conf)
    collector = metrics_mod.FleetCollector(urls.database_url,
                                           policy=CachePolicy.from_settings(conf))
    reg = metrics_mod.registry(collector=collector)
    if once:
        click.echo(generate_latest(reg).decode(), nl=False)
        if collector.last_error is not None:
            raise DatabaseUnavailable(f"metrics incomplete: {collector.last_error}")
        return
    server, thread = metrics_mod.serve(reg, port=conf.metrics_port if port is None else port,
                                       address=address)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("serving Prometheus metrics on http://%s:%s/metrics", address,
                server.server_port)
    stop.wait()
    server.shutdown()
    thread.join(5)
