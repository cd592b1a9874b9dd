"""``pgfleet api-key``: the HTTP API's keys (see :mod:`pgfleet.api.keys`)."""

from __future__ import annotations

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.group("api-key")
def api_key() -> None:
    """Create, list and revoke the HTTP API's keys (stored as hashes only)."""


@api_key.command("create")
@click.argument("name")
def create(name: str) -> None:
    """A new key called NAME, printed once, alone on the last line (keep it: only its hash
    is stored)."""
    from pgfleet.api import keys
    from pgfleet.cli import context

    with context.connection(autocommit=True) as conn:
        key = keys.create(conn, name)
    click.echo(f"API key {name!r} created; send it as Authorization: Bearer KEY. It is not "
               "shown again:", err=False)
    click.echo(key)


@api_key.command("list")
@click.option("--json", "as_json", is_flag=True)
def listing(as_json: bool) -> None:
    """Every key: its name, its first characters, when it was made, last used and revoked."""
    import json

    from pgfleet.api import keys
    from pgfleet.cli import context

    with context.connection(autocommit=True) as conn:
        rows = keys.listing(conn)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    table = Table()
    for col in ("name", "key", "created", "last used", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["prefix"] + "...", _when(r["created_at"]),
                      _when(r["last_used_at"]), _when(r["revoked_at"]))
    out.print(table)


@api_key.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the key NAME: the API refuses it from its next request."""
    from pgfleet.api import keys
    from pgfleet.cli import context

    with context.connection(autocommit=True) as conn:
        keys.revoke(conn, name)
    out.print(f"API key {name!r} revoked")


def _when(value) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
