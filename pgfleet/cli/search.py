"""``pgfleet search``: the nearest docs to a query, routed by the A/B split (or to a given
version)."""

from __future__ import annotations

import json
import logging

import click
from rich.table import Table

from pgfleet.cli.output import out

logger = logging.getLogger(__name__)


@click.command()
@click.argument("text", required=False)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--version", "version_ref", default=None,
              help="model version: id, v1 or name@v1 (default: routed by the A/B split)")
@click.option("--key", default=None, help="user or session id: sticky A/B assignment")
@click.option("--name", default=None, help="model name to route within (default: the main one)")
@click.option("--file", "query_file", type=click.File("r", encoding="utf-8"),
              help="one query per line")
@click.option("--source", "source_name", default=None,
              help="search this source's rows (pgfleet source list) instead of docs")
@click.option("--mode", type=click.Choice(["vector", "hybrid"]), default="vector",
              show_default=True,
              help="hybrid: vector and full-text results fused by reciprocal rank (a source)")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per query")
def search(text: str | None, k: int, version_ref: str | None, key: str | None, name: str | None,
           query_file, source_name: str | None, mode: str, as_json: bool) -> None:
    """Nearest docs to TEXT (or to each line of --file); with --source, the rows of that
    source, each with its best chunk.

    Asked of the fleet's HTTP API when one is running (PGFLEET_API_URL, or the one
    `pgfleet up` runs), which has the model loaded; otherwise in this process."""
    from pgfleet.api import client
    from pgfleet.cli import context

    if (text is None) == (query_file is None):
        raise click.UsageError("give a query TEXT or --file, not both")
    queries = [text] if text is not None else [q.strip() for q in query_file if q.strip()]
    if source_name == "docs":
        source_name = None
    if mode == "hybrid" and source_name is None:
        raise click.UsageError("--mode hybrid searches a source's chunks: give --source")
    if source_name is not None and name is not None:
        raise click.UsageError("a source is searched with its own model: give --version, "
                               "not --name")
    conf = context.settings()
    api = client.find(conf.home)
    local = None
    for query in queries:
        answer = None
        if api is not None:
            try:
                body = {"query": query, "k": k, "key": key, "version": version_ref,
                        "name": name}
                if source_name is not None:
                    body.update(source=source_name, mode=mode)
                answer = api.post("/v1/search", body)
            except client.Unreachable as exc:
                logger.warning("the API at %s stopped answering (%s): searching here", api.url,
                               exc)
                api = None
        if answer is None:
            local = local or _Local(conf)
            answer = (local.search_source(source_name, query, k, mode, version_ref, key)
                      if source_name is not None
                      else local.search(query, k, version_ref, key, name))
        _show(answer, as_json)
    if local is not None:
        local.close()


class _Local:
    """Search in this process: the model loaded here, one connection for every query."""

    def __init__(self, conf):
        from pgfleet.cli import context

        self.conf = conf
        self._connection = context.connection(conf, autocommit=True)
        self.conn = self._connection.__enter__()

    def search(self, query, k, version_ref, key, name) -> dict:
        from pgfleet.embedding.engines import load_for
        from pgfleet.embedding.search import routed_search

        return routed_search(self.conn, lambda spec: load_for(spec, self.conf), query, k,
                             version_ref=version_ref, key=key, name=name).as_json()

    def search_source(self, source, query, k, mode, version_ref, key) -> dict:
        from pgfleet.embedding.engines import load_for
        from pgfleet.sources.search import search_source

        return search_source(self.conn, lambda spec: load_for(spec, self.conf), source, query,
                             k, mode=mode, version_ref=version_ref, key=key)

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def _show(answer: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer))
        return
    note = (f", fell back from {answer['fallback_from']} (still backfilling)"
            if answer.get("fallback_from") else "")
    if "source" in answer:
        _show_rows(answer)
        return
    table = Table(title=f"{answer['query']!r} ({answer['version']}{note}; "
                        f"{answer['latency_ms']:.0f} ms)", title_justify="left")
    table.add_column("doc", justify="right")
    table.add_column("score", justify="right")
    table.add_column("content", overflow="fold")
    for h in answer["hits"]:
        table.add_row(str(h["doc_id"]), f"{h['score']:.3f}", h["content"][:300])
    out.print(table)


def _show_rows(answer: dict) -> None:
    table = Table(title=f"{answer['query']!r} in {answer['source']} ({answer['mode']}, "
                        f"{answer['version']}; {answer['latency_ms']:.0f} ms)",
                  title_justify="left")
    table.add_column("key", justify="right")
    table.add_column("score", justify="right")
    table.add_column("chunk", justify="right")
    table.add_column("text", overflow="fold")
    for h in answer["hits"]:
        chunk = h["chunk"]
        where = f"{chunk['heading']}: " if chunk["heading"] else ""
        table.add_row(h["key"], f"{h['score']:.4f}", str(chunk["number"]),
                      where + chunk["text"][:300])
    out.print(table)
