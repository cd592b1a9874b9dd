"""``pgfleet text2sql ...``: text-to-SQL examples, loaded from a file or generated."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from rich.table import Table

from pgfleet.cli.output import console, file_load_options, out
from pgfleet.errors import PgfleetError


def _quiet_sqlglot() -> None:
    # sqlglot says on stderr when it falls back to a generic command; the reasons say more
    logging.getLogger("sqlglot").setLevel(logging.ERROR)


@click.group("text2sql")
def text2sql() -> None:
    """Text-to-SQL examples: (question, sql) pairs to train on."""


@text2sql.command("load")
@file_load_options
def load(path: Path, skip_bad: bool, as_json: bool) -> None:
    """Load examples from a CSV (header question,sql[,db_name]) or JSONL file.

    Every bad row is reported with its line, and so is every SQL that does not pass the
    guard on the live schema (the allow-list, then EXPLAIN in a session of the pgfleet_reader
    login). By default nothing is loaded when any row is bad."""
    from pgfleet.cli import context
    from pgfleet.text2sql.examples import load_file
    from pgfleet.text2sql.readonly import connect_reader

    _quiet_sqlglot()
    with context.connection(autocommit=True) as conn, \
            connect_reader(context.urls().reader_url) as reader:
        report = load_file(conn, path, reader=reader, skip_bad=skip_bad)
    problems = [str(p) for p in report.problems]
    for problem in problems:
        console.print(f"[red]{path}:[/red] {problem}", highlight=False, soft_wrap=True)
    result = {"file": str(path), "valid": report.valid, "bad": report.bad,
              "loaded": report.loaded,
              "already_stored": report.valid - report.loaded if report.stored else 0,
              "problems": problems}
    if as_json:
        click.echo(json.dumps(result))
    elif problems and not skip_bad:
        console.print(f"{len(problems)} bad row(s): nothing loaded (fix them, or load the "
                      f"{report.valid} good ones with --skip-bad)", highlight=False)
    else:
        out.print(f"loaded {report.loaded} example(s) from {path} "
                  f"({result['already_stored']} already stored, {len(problems)} bad)")
    if problems and not skip_bad:
        sys.exit(1)
    if not report.valid:
        raise PgfleetError(f"{path}: no valid examples in it")


@text2sql.command("synth")
@click.option("--per-template", type=click.IntRange(min=1), default=200, show_default=True,
              help="SQL queries to keep per template at most")
@click.option("--phrasings", type=click.IntRange(min=1, max=4), default=2, show_default=True,
              help="questions per SQL query (different phrasings)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--schema", "schemas", multiple=True, default=("public",), show_default=True,
              help="schema to read tables from (repeatable)")
@click.option("--dry-run", is_flag=True, help="count what would be generated; store nothing")
@click.option("--json", "as_json", is_flag=True)
def synth(per_template: int, phrasings: int, seed: int, schemas: tuple[str, ...],
          dry_run: bool, as_json: bool) -> None:
    """Generate (question, sql) examples from the live schema with templates: filters,
    counts, group by, top N, joins along foreign keys, date ranges, aggregates.

    Values come from the tables themselves; every SQL passes the guard (pgfleet_reader must
    be able to read the tables). See docs/text2sql.md for what such examples can teach."""
    from pgfleet.cli import context
    from pgfleet.text2sql.examples import insert_examples
    from pgfleet.text2sql.readonly import connect_reader
    from pgfleet.text2sql.schema_text import introspect
    from pgfleet.text2sql.synth import synthesize

    _quiet_sqlglot()
    with context.connection(autocommit=True) as conn, \
            connect_reader(context.urls().reader_url) as reader:
        found = introspect(conn, list(schemas))
        result = synthesize(conn, reader, schema=found, seed=seed, per_template=per_template,
                            phrasings=phrasings)
        stored = 0 if dry_run else insert_examples(conn, result.examples)
    summary = {"tables": len(found.tables), "examples": len(result.examples), "stored": stored,
               "dry_run": dry_run, "by_template": dict(sorted(result.counts.items())),
               "dropped": dict(sorted(result.dropped.items())), "reasons": result.reasons}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        table = Table(title=f"text2sql synth ({len(found.tables)} table(s), seed {seed})")
        for name in ("template", "examples", "dropped"):
            table.add_column(name, justify="left" if name == "template" else "right")
        for name in sorted(set(result.counts) | set(result.dropped)):
            table.add_row(name, str(result.counts[name]), str(result.dropped[name]))
        out.print(table)
        out.print(f"{len(result.examples)} example(s)"
                  + (" (dry run: nothing stored)" if dry_run else f", {stored} new in "
                                                                  "text2sql_examples"))
        for name, reason in sorted(result.reasons.items()):
            console.print(f"dropped from {name}, for example: {reason}", highlight=False,
                          soft_wrap=True)
    if not result.examples:
        raise PgfleetError("no examples: no table had usable columns, or pgfleet_reader "
                           "cannot read them (GRANT SELECT ON ... TO pgfleet_reader)")
