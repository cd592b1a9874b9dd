"""``pgfleet search``: the nearest docs to a query, routed by the A/B split (or to a given
version)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.command()
@click.argument("text", required=False)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--version", "version_ref", default=None,
              help="model version: id, v1 or name@v1 (default: routed by the A/B split)")
@click.option("--key", default=None, help="user or session id: sticky A/B assignment")
@click.option("--name", default=None, help="model name to route within (default: the main one)")
@click.option("--file", "query_file", type=click.File("r", encoding="utf-8"),
              help="one query per line")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per query")
def search(text: str | None, k: int, version_ref: str | None, key: str | None, name: str | None,
           query_file, as_json: bool) -> None:
    """Nearest docs to TEXT (or to each line of --file)."""
    from pgfleet.cli import context
    from pgfleet.embedding.engines import load_for
    from pgfleet.embedding.search import routed_search

    if (text is None) == (query_file is None):
        raise click.UsageError("give a query TEXT or --file, not both")
    queries = [text] if text is not None else [q.strip() for q in query_file if q.strip()]
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        for query in queries:
            answer = routed_search(conn, lambda spec: load_for(spec, conf), query, k,
                                   version_ref=version_ref, key=key, name=name)
            if as_json:
                click.echo(json.dumps(answer.as_json()))
                continue
            note = (f", fell back from {answer.route.fallback_from} (still backfilling)"
                    if answer.route.fallback_from else "")
            table = Table(title=f"{query!r} ({answer.route.spec.label}{note}; "
                                f"{answer.latency_ms:.0f} ms)", title_justify="left")
            table.add_column("doc", justify="right")
            table.add_column("score", justify="right")
            table.add_column("content", overflow="fold")
            for h in answer.hits:
                table.add_row(str(h.doc_id), f"{h.score:.3f}", h.content[:300])
            out.print(table)
