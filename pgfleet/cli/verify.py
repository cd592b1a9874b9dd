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
    """Check that every doc has exactly the right vectors; exit 1 if anything is wrong."""
    from pgfleet.cli import context
    from pgfleet.embedding.verify import consistent
    from pgfleet.embedding.verify import verify as run_verify

    with context.connection() as conn:
        report = run_verify(conn)
    if as_json:
        click.echo(json.dumps(report))
    else:
        table = Table(title="verify")
        for col in ("version", "docs", "missing", "stale", "orphaned", "duplicated", "pending",
                    "failed", "failed with content"):
            table.add_column(col, justify="right")
        for r in report:
            table.add_row(f"{r['name']}@{r['version']}", *(str(r[k]) for k in (
                "docs", "missing", "stale", "orphaned", "duplicated", "pending", "failed",
                "failed_with_content")))
        out.print(table)
    if not consistent(report, settled=False):
        sys.exit(1)
