"""``pgfleet verify``: whether every doc has exactly the vectors it should, per version."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.command()
@click.option("--json", "as_json", is_flag=True)
def verify(as_json: bool) -> None:
    """Check that every doc, and every row of every source, has exactly the right vectors;
    exit 1 if anything is wrong."""
    from pgfleet.cli import context
    from pgfleet.embedding.verify import consistent
    from pgfleet.embedding.verify import verify as run_verify
    from pgfleet.sources.catalog import verify as verify_sources

    with context.connection() as conn:
        report = run_verify(conn) + verify_sources(conn)
    if as_json:
        click.echo(json.dumps(report))
    else:
        table = Table(title="verify")
        for col in ("version", "docs", "missing", "stale", "orphaned", "duplicated", "pending",
                    "failed", "failed with content"):
            table.add_column(col, justify="right")
        for r in (r for r in report if "source" not in r):
            table.add_row(f"{r['name']}@{r['version']}", *(str(r[k]) for k in (
                "docs", "missing", "stale", "orphaned", "duplicated", "pending", "failed",
                "failed_with_content")))
        out.print(table)
        sources = [r for r in report if "source" in r]
        if sources:
            table = Table(title="verify: sources")
            for col in ("source", "version", "rows", "missing", "stale", "orphaned",
                        "duplicated", "pending", "failed"):
                table.add_column(col, justify="right")
            for r in sources:
                table.add_row(r["source"], f"{r['name']}@{r['version']}", *(str(r[k]) for k in (
                    "rows", "missing", "stale", "orphaned", "duplicated", "pending", "failed")))
            out.print(table)
    if not consistent(report, settled=False):
        sys.exit(1)
