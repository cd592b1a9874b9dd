"""``pgfleet serve``: the HTTP API (see :mod:`pgfleet.api.app`). ``pgfleet up`` runs the same
command as a child."""

from __future__ import annotations

import dataclasses

import click


@click.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="default: PGFLEET_API_PORT (8000)")
@click.option("--address", default=None,
              help="default: PGFLEET_API_ADDRESS (127.0.0.1); 0.0.0.0 for other machines")
def serve(port: int | None, address: str | None) -> None:
    """Serve the HTTP API: /v1/search, /v1/embeddings (OpenAI-compatible), /v1/sql,
    /v1/feedback, /v1/models, /healthz, /metrics, a search page at / and the OpenAPI docs at
    /docs. Requests need an API key (pgfleet api-key create NAME)."""
    from pgfleet.api.app import serve as run
    from pgfleet.cli import context

    conf = context.settings()
    urls = context.urls(conf)
    run(dataclasses.replace(conf, database_url=urls.database_url, reader_url=urls.reader_url),
        port=port, address=address)
