"""``pgfleet db migrate`` and ``pgfleet db url``: the fleet's database schema, and the URL to
connect to it."""

from __future__ import annotations

import click

from pgfleet.cli.output import out
from pgfleet.errors import ConfigurationError


@click.group()
def db() -> None:
    """The fleet's database."""


@db.command("migrate")
@click.option("--reader-login", is_flag=True,
              help="also let pgfleet_reader log in with the password in PGFLEET_READER_URL "
                   "(the session guarded SQL runs in); needs a user that may ALTER that role")
def db_migrate(reader_login: bool) -> None:
    """Create or upgrade the schema (idempotent; safe to run concurrently)."""
    from urllib.parse import unquote, urlsplit

    from pgfleet.cli import context
    from pgfleet.ops.fleet import READER_ROLE, enable_reader_login
    from schema.migrate import migrate

    conf = context.settings()
    if reader_login:
        parts = urlsplit(conf.reader_url or "")
        if parts.username != READER_ROLE or not parts.password:
            raise ConfigurationError(f"--reader-login needs PGFLEET_READER_URL with the user "
                                     f"{READER_ROLE} and its password, e.g. postgresql://"
                                     f"{READER_ROLE}:PASSWORD@host:5432/db")
    with context.connection(conf) as conn:
        result = migrate(conn)
    if result.applied:
        out.print(f"applied: {', '.join(result.applied)}", soft_wrap=True)
    else:
        out.print("schema is up to date")
    if reader_login:
        enable_reader_login(context.urls(conf).database_url, unquote(parts.password or ""))
        out.print(f"{READER_ROLE} may log in with the password of PGFLEET_READER_URL")


@db.command("url")
@click.option("--reader", is_flag=True,
              help="the login guarded (text-to-SQL) queries run as, with pgfleet_reader's "
                   "rights only")
def db_url(reader: bool) -> None:
    """Print the database URL in use (embedded or not), password included: connect any SQL
    client with it. The embedded server's password is in $PGFLEET_HOME/credentials.json."""
    from pgfleet.cli import context

    urls = context.urls()
    if not reader:
        click.echo(urls.database_url)
    elif urls.reader_url:
        click.echo(urls.reader_url)
    else:
        raise ConfigurationError("no reader login: set PGFLEET_READER_URL (the embedded "
                                 "default makes one at `pgfleet up`)")
