"""``pgfleet failures``: docs that could not be embedded and why; ``--retry`` queues them
again."""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.command()
@click.option("--retry", is_flag=True, help="clear the failures and queue their docs again")
@click.option("--version", "version_ref", default=None, help="only this version (with --retry)")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failures(retry: bool, version_ref: str | None, limit: int, as_json: bool) -> None:
    """Docs that could not be embedded, with why; --retry queues them again."""
    from pgfleet import db as wdb
    from pgfleet.cli import context
    from pgfleet.models.versions import embedding_version

    with context.connection() as conn:
        if retry:
            version_id = embedding_version(conn, version_ref).version_id if version_ref else None
            with conn.transaction():
                row = wdb.fetch_one(conn, "retry_failures", {"version_id": version_id})
            out.print(f"queued {row['queued']} doc(s) again")
            return
        rows = wdb.fetch_all(conn, "list_failures", {"limit": limit})
    if as_json:
        click.echo(json.dumps([{**r, "first_failed_at": r["first_failed_at"].isoformat(),
                                "last_failed_at": r["last_failed_at"].isoformat()}
                               for r in rows]))
        return
    table = Table(title=f"failures (latest {limit})")
    for col in ("doc", "version", "reason", "attempts", "last error", "last failed"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["doc_id"]), r["version"], r["reason"], str(r["attempts"]),
                      (r["last_error"] or "")[:120], r["last_failed_at"].strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)
