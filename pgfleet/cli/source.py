"""``pgfleet source``: tables whose rows the fleet embeds, chunk by chunk (see
:mod:`pgfleet.sources`)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.group()
def source() -> None:
    """Embed any table: add, list and drop sources."""


@source.command("add")
@click.argument("name")
@click.option("--table", required=True, help="TABLE or SCHEMA.TABLE, as psql would find it")
@click.option("--key", default=None, help="the primary key column (default: the table's)")
@click.option("--columns", required=True,
              help="COL[,COL...]: the columns embedded; a change of any of them re-embeds the row")
@click.option("--template", default=None,
              help="how the text is made from the columns, e.g. '{title}\\n\\n{body}' "
                   "(default: the columns joined by blank lines)")
@click.option("--model", default=None,
              help="the model name whose active versions embed it (default: every active one)")
@click.option("--chunking", type=click.Choice(["markdown", "tokens", "none"]),
              default="markdown", show_default=True,
              help="markdown: at headings, then by tokens; tokens: windows of --chunk-tokens; "
                   "none: the whole text, truncated at the model's window")
@click.option("--chunk-tokens", default=200, show_default=True, type=int,
              help="a chunk's size in the model's tokens (never more than its window)")
@click.option("--overlap", default=32, show_default=True, type=int,
              help="tokens two neighbouring chunks share")
@click.option("--text-config", default="english", show_default=True,
              help="the text search configuration of hybrid search's full-text side")
@click.option("--always", is_flag=True,
              help="triggers ENABLE ALWAYS: rows arriving by logical replication are "
                   "embedded too (needs the table's owner)")
@click.option("--json", "as_json", is_flag=True)
def add(name: str, table: str, key: str | None, columns: str, template: str | None,
        model: str | None, chunking: str, chunk_tokens: int, overlap: int, text_config: str,
        always: bool, as_json: bool) -> None:
    """Embed TABLE's rows as source NAME: its existing rows are queued behind live changes,
    and every insert, update or delete of the embedded columns from then on."""
    from pgfleet.cli import context
    from pgfleet.sources import catalog

    if template is not None:   # \n and \t as a shell passes them
        template = template.replace("\\n", "\n").replace("\\t", "\t")
    spec = catalog.SourceSpec(
        name=name, table=table, key=key, columns=[c.strip() for c in columns.split(",") if c.strip()],
        template=template, model=model, chunking=chunking, chunk_tokens=chunk_tokens,
        overlap=overlap, text_config=text_config, always=always)
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        added, queued = catalog.add(conn, spec, index_wait_s=conf.ab_lock_wait_s)
    if as_json:
        click.echo(json.dumps({**added.as_json(), "queued": queued}, default=str))
        return
    out.print(f"source {added.name!r}: {added.table} by {added.key_column}, columns "
              f"{', '.join(added.columns)}, {added.chunking} chunking; {queued} existing "
              "row(s) queued")
    for label, index in added.extra.get("indexes", {}).items():
        if index.get("problem"):
            out.print(f"[yellow]{label}: {index['problem']}[/yellow]")


@source.command("list")
@click.option("--json", "as_json", is_flag=True)
def listing(as_json: bool) -> None:
    """Every source with its rows embedded, chunks, pending and failed rows."""
    from pgfleet import db as wdb
    from pgfleet.cli import context
    from pgfleet.sources import catalog

    with context.connection(autocommit=True) as conn:
        sources = catalog.list_sources(conn, counts=True)
        docs = wdb.fetch_one(conn, "docs_source_counts")
    builtin = {"name": catalog.BUILTIN, "table": "public.docs", "key_column": "id",
               "columns": ["content"], "chunking": "none", "builtin": True, **(docs or {})}
    rows = [builtin, *(s.as_json() for s in sources)]
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    table = Table()
    for col in ("source", "table", "key", "columns", "chunking", "rows embedded", "chunks",
                "pending", "failed"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["table"], r["key_column"], ", ".join(r["columns"]),
                      r["chunking"], str(r.get("rows_embedded", "")), str(r.get("chunks", "")),
                      str(r.get("pending", "")), str(r.get("failed", "")))
    out.print(table)


@source.command("drop")
@click.argument("name")
def drop(name: str) -> None:
    """Remove source NAME: its triggers, view, index, pending rows, chunks and failures.
    Nothing of the table itself."""
    from pgfleet.cli import context
    from pgfleet.sources import catalog

    with context.connection(autocommit=True) as conn:
        dropped = catalog.drop(conn, name)
    out.print(f"dropped source {dropped.name!r} ({dropped.table} is untouched)")


@source.command("failures")
@click.argument("name", required=False)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failures(name: str | None, limit: int, as_json: bool) -> None:
    """Rows of sources (or of source NAME) that could not be embedded, with why."""
    from pgfleet import db as wdb
    from pgfleet.cli import context
    from pgfleet.sources import catalog

    with context.connection(autocommit=True) as conn:
        source_id = catalog.get(conn, name).id if name else None
        rows = wdb.fetch_all(conn, "list_source_failures",
                             {"source_id": source_id, "limit": limit})
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    table = Table(title=f"source failures (latest {limit})")
    for col in ("source", "key", "version", "reason", "attempts", "last error"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["source"], r["row_key"], r["version"], r["reason"], str(r["attempts"]),
                      (r["last_error"] or "")[:120])
    out.print(table)
