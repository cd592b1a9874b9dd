"""``pgfleet sql``: check or run one read-only SQL query through the text-to-SQL guard."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from workers.errors import QueryTimeout, SqlRejected


def _console():
    from pgfleet.cli import console, out

    return console, out


@click.command("sql")
@click.option("--check", "check_text", metavar="SQL", default=None,
              help="check SQL without running it: parse, one statement, read-only, EXPLAIN")
@click.option("--run", "run_text", metavar="SQL", default=None,
              help="check SQL, then run it read-only as pgfleet_reader")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=5000, show_default=True,
              help="cancel the query (or its EXPLAIN) after this long")
@click.option("--max-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="rows to fetch at most; more are reported as truncated")
@click.option("--json", "as_json", is_flag=True)
def sql(check_text: str | None, run_text: str | None, timeout_ms: int, max_rows: int,
        as_json: bool) -> None:
    """Check or run one read-only SQL query, exactly as generated SQL will be.

    Give the SQL with --check or --run (one of them); generating SQL from a question is not
    available yet. Exit status 0 when the SQL passes (and ran), 1 when it is rejected.
    Queries run as the role pgfleet_reader, which can read docs; grant it SELECT on your own
    tables to query them.
    """
    if (check_text is None) == (run_text is None):
        raise click.UsageError("give exactly one of --check SQL or --run SQL")
    # sqlglot says on stderr when it falls back to a generic command; the reasons say more
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    if check_text is not None:
        _check(check_text, timeout_ms, as_json)
    else:
        _run(run_text or "", timeout_ms, max_rows, as_json)


def _check(text: str, timeout_ms: int, as_json: bool) -> None:
    from pgfleet import context
    from workers.text2sql import check_sql

    with context.connection(autocommit=True) as conn:
        verdict = check_sql(text, conn, timeout_ms=timeout_ms)
    if as_json:
        click.echo(json.dumps({"ok": verdict.ok, "reasons": verdict.reasons, "sql": verdict.sql}))
    elif verdict.ok:
        click.echo("ok")
    else:
        _print_reasons(verdict.reasons)
    if not verdict.ok:
        sys.exit(1)


def _run(text: str, timeout_ms: int, max_rows: int, as_json: bool) -> None:
    from pgfleet import context
    from workers.text2sql import run_readonly

    try:
        with context.connection(autocommit=True) as conn:
            result = run_readonly(conn, text, timeout_ms=timeout_ms, row_cap=max_rows)
    except (SqlRejected, QueryTimeout) as exc:
        reasons = exc.reasons if isinstance(exc, SqlRejected) else [str(exc)]
        if as_json:
            click.echo(json.dumps({"ok": False, "reasons": reasons}))
        else:
            _print_reasons(reasons)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ok": True, "columns": result.columns,
                               "rows": [list(r) for r in result.rows],
                               "truncated": result.truncated,
                               "elapsed_ms": round(result.elapsed_ms, 1)}, default=str))
        return
    _, out = _console()
    table = Table(caption=_caption(len(result.rows), result.truncated, result.elapsed_ms))
    for name in result.columns:
        table.add_column(Text(name))
    for row in result.rows:
        table.add_row(*(Text(_cell(v)) for v in row))
    out.print(table)


def _print_reasons(reasons: list[str]) -> None:
    console, _ = _console()
    console.print("rejected:", style="red", highlight=False)
    for reason in reasons:
        click.echo(f"- {reason}")


def _caption(rows: int, truncated: bool, elapsed_ms: float) -> str:
    more = f" (truncated: more than {rows})" if truncated else ""
    return f"{rows} row(s){more} in {elapsed_ms:.0f} ms"


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)
