"""``pgfleet sql``: SQL for a question (text-to-SQL), or check or run SQL written by hand,
always through the text-to-SQL guard."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from pgfleet.cli.output import console, out
from pgfleet.errors import QueryTimeout, ResultTooLarge, SqlRejected
from pgfleet.text2sql.readonly import DEFAULT_MAX_BYTES

#: what ``--run`` holds when given without SQL: run the SQL generated for QUESTION
RUN_GENERATED = "\x00generated"


@click.command("sql")
@click.argument("question", required=False)
@click.option("--check", "check_text", metavar="SQL", default=None,
              help="check SQL without running it: parse, one statement, read-only, EXPLAIN")
@click.option("--run", "run_text", metavar="[SQL]", default=None, is_flag=False,
              flag_value=RUN_GENERATED,
              help="after QUESTION: run the generated SQL; with SQL: check it, then run it "
                   "(read-only, in a session of the pgfleet_reader login)")
@click.option("--version", "version", default=None,
              help="the text2sql version to answer QUESTION (id, v2, name@v2; default: the "
                   "A/B split of the active text2sql model)")
@click.option("--key", default=None,
              help="a user or session id: the A/B split gives the same key the same version")
@click.option("--beams", type=click.IntRange(min=1, max=16), default=4, show_default=True,
              help="candidates to generate for QUESTION")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=5000, show_default=True,
              help="cancel the query (or its EXPLAIN) after this long")
@click.option("--max-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="rows to fetch at most; more are reported as truncated")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES,
              show_default=True,
              help="the most the result may hold (its rows as text); a larger one is refused")
@click.option("--json", "as_json", is_flag=True)
def sql(question: str | None, check_text: str | None, run_text: str | None,
        version: str | None, key: str | None, beams: int, timeout_ms: int, max_rows: int,
        max_bytes: int, as_json: bool) -> None:
    """SQL for QUESTION, or check or run SQL written by hand, exactly as generated SQL is.

    \b
    pgfleet sql "how many orders are paid?"          SQL from the active text2sql version
    pgfleet sql "how many orders are paid?" --run    ... and its result
    pgfleet sql --check "SELECT ..."                 the guard's verdict on SQL
    pgfleet sql --run "SELECT ..."                   check SQL, then run it

    For a question the model proposes --beams candidates and the first that passes the
    guard (one statement, the allow-list of functions, EXPLAIN) is used; the answer says
    which beam and why the others were rejected. Exit status 0 when the SQL passes (and
    ran), 1 when it is rejected or no candidate passed. Queries run in a session of the login
    pgfleet_reader (PGFLEET_READER_URL), read-only: grant it SELECT on your own tables to
    query them. A result is at most --max-rows rows and --max-bytes bytes.
    """
    # sqlglot says on stderr when it falls back to a generic command; the reasons say more
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    if question is not None:
        if check_text is not None or run_text not in (None, RUN_GENERATED):
            raise click.UsageError("give a QUESTION, or SQL with --check or --run, not both "
                                   "(put --run after the question to run its SQL)")
        _answer(question, version, key, beams, run_text is not None, timeout_ms,
                (max_rows, max_bytes), as_json)
        return
    if run_text == RUN_GENERATED:
        raise click.UsageError("--run needs SQL, or a QUESTION before it")
    if (check_text is None) == (run_text is None):
        raise click.UsageError("give a QUESTION, or exactly one of --check SQL or --run SQL")
    if check_text is not None:
        _check(check_text, timeout_ms, as_json)
    else:
        _run(run_text or "", timeout_ms, (max_rows, max_bytes), as_json)


def _reader():
    """A session of the reader login: where guarded SQL runs."""
    from pgfleet.cli import context
    from pgfleet.text2sql.readonly import connect_reader

    return connect_reader(context.urls().reader_url)


def _check(text: str, timeout_ms: int, as_json: bool) -> None:
    from pgfleet.text2sql import check_sql

    with _reader() as reader:
        verdict = check_sql(text, reader, timeout_ms=timeout_ms)
    if as_json:
        click.echo(json.dumps({"ok": verdict.ok, "reasons": verdict.reasons, "sql": verdict.sql}))
    elif verdict.ok:
        click.echo("ok")
    else:
        _print_reasons(verdict.reasons)
    if not verdict.ok:
        sys.exit(1)


def _answer(question: str, version: str | None, key: str | None, beams: int, run: bool,
            timeout_ms: int, caps: tuple[int, int], as_json: bool) -> None:
    from pgfleet.cli import context
    from pgfleet.text2sql.generate import generate_sql

    asked = _ask_api(question, version, key, beams, run, timeout_ms, caps)
    if asked is not None:
        _show_api_answer(asked, run, as_json)
        return
    with context.connection(autocommit=True) as conn, _reader() as reader:
        answer = generate_sql(conn, question, reader=reader, version=version, beams=beams,
                              key=key)
    payload = answer.as_dict()
    if not answer.ok:
        if as_json:
            click.echo(json.dumps(payload, default=str))
        else:
            console.print(f"{answer.why} ({answer.version}):", style="red", highlight=False)
            for rejected in answer.rejected:
                click.echo(f"- beam {rejected['beam']}: {rejected['sql']!r}")
                for reason in rejected["reasons"]:
                    click.echo(f"    {reason}")
        sys.exit(1)
    if not as_json:
        click.echo(answer.sql)
        out.print(f"[dim]{answer.version}, {answer.why}, {answer.latency_ms:.0f} ms[/dim]")
        for rejected in answer.rejected:
            out.print(f"[dim]  beam {rejected['beam']} rejected: "
                      f"{'; '.join(rejected['reasons'])}[/dim]", highlight=False)
    if run:
        _run(answer.sql or "", timeout_ms, caps, as_json, extra=payload if as_json else None)
    elif as_json:
        click.echo(json.dumps(payload, default=str))


def _ask_api(question: str, version: str | None, key: str | None, beams: int, run: bool,
             timeout_ms: int, caps: tuple[int, int]) -> dict[str, Any] | None:
    """The running API's answer (it has the model loaded), or None when none answers."""
    from pgfleet.api import client
    from pgfleet.cli import context

    api = client.find(context.settings().home)
    if api is None:
        return None
    try:
        return api.post("/v1/sql", {"question": question, "run": run, "key": key,
                                    "version": version, "beams": beams,
                                    "timeout_ms": timeout_ms, "max_rows": caps[0],
                                    "max_bytes": caps[1]})
    except client.Unreachable as exc:
        logging.getLogger(__name__).warning("the API at %s stopped answering (%s): answering "
                                            "here", api.url, exc)
        return None


def _show_api_answer(payload: dict[str, Any], run: bool, as_json: bool) -> None:
    """Print what the API answered as the in-process path prints its own answer."""
    if as_json:
        click.echo(json.dumps(payload, default=str))
        if not payload.get("ok"):
            sys.exit(1)
        return
    if not payload.get("sql"):
        console.print(f"{payload.get('why')} ({payload.get('version')}):", style="red",
                      highlight=False)
        for rejected in payload.get("rejected") or []:
            click.echo(f"- beam {rejected['beam']}: {rejected['sql']!r}")
            for reason in rejected["reasons"]:
                click.echo(f"    {reason}")
        sys.exit(1)
    click.echo(payload["sql"])
    out.print(f"[dim]{payload['version']}, {payload['why']}, {payload['latency_ms']:.0f} "
              "ms[/dim]")
    for rejected in payload.get("rejected") or []:
        out.print(f"[dim]  beam {rejected['beam']} rejected: "
                  f"{'; '.join(rejected['reasons'])}[/dim]", highlight=False)
    if not run:
        return
    if not payload.get("ok"):
        _print_reasons(payload.get("reasons") or [])
        sys.exit(1)
    table = Table(caption=_caption(len(payload["rows"]), payload["truncated"],
                                   payload["elapsed_ms"]))
    for name in payload["columns"]:
        table.add_column(Text(name))
    for row in payload["rows"]:
        table.add_row(*(Text(_cell(v)) for v in row))
    out.print(table)


def _run(text: str, timeout_ms: int, caps: tuple[int, int], as_json: bool,
         extra: dict[str, Any] | None = None) -> None:
    from pgfleet.text2sql import run_readonly

    max_rows, max_bytes = caps
    try:
        with _reader() as reader:
            result = run_readonly(reader, text, timeout_ms=timeout_ms, row_cap=max_rows,
                                  max_bytes=max_bytes)
    except (SqlRejected, QueryTimeout) as exc:
        reasons = exc.reasons if isinstance(exc, SqlRejected) else [str(exc)]
        if isinstance(exc, ResultTooLarge):
            reasons = [*reasons, "Raise the bound with --max-bytes, or narrow the query."]
        if as_json:
            click.echo(json.dumps({**(extra or {}), "ok": False, "reasons": reasons},
                                  default=str))
        else:
            _print_reasons(reasons)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({**(extra or {}), "ok": True, "columns": result.columns,
                               "rows": [list(r) for r in result.rows],
                               "truncated": result.truncated, "bytes": result.bytes,
                               "elapsed_ms": round(result.elapsed_ms, 1)}, default=str))
        return
    table = Table(caption=_caption(len(result.rows), result.truncated, result.elapsed_ms))
    for name in result.columns:
        table.add_column(Text(name))
    for row in result.rows:
        table.add_row(*(Text(_cell(v)) for v in row))
    out.print(table)


def _print_reasons(reasons: list[str]) -> None:
    console.print("rejected:", style="red", highlight=False)
    for reason in reasons:
        click.echo(f"- {reason}")


def _caption(rows: int, truncated: bool, elapsed_ms: float) -> str:
    more = f" (truncated: more than {rows})" if truncated else ""
    return f"{rows} row(s){more} in {elapsed_ms:.0f} ms"


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)
