"""``pgfleet train ...``: training data, training jobs on the training queue, their runs.

One command per job of :data:`pgfleet.training.specs.SPECS`, made from its spec."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pgfleet.cli.jobs import job_command, jsonable
from pgfleet.cli.output import console, file_load_options, out, progress_bar
from pgfleet.errors import PgfleetError
from pgfleet.training.specs import SPECS


@click.group()
def train() -> None:
    """Jobs of the training queue, their data and their runs."""


# ------------------------------------------------------------------------------ data
@train.group("data")
def data() -> None:
    """Training pairs: (text_a, text_b, optional score in [0, 1])."""


@data.command("load")
@file_load_options
def data_load(path: Path, skip_bad: bool, as_json: bool) -> None:
    """Load pairs from a CSV (header text_a,text_b[,score]) or JSONL file. Every bad row is
    reported with its line; by default nothing is loaded when any row is bad."""
    from pgfleet.cli import context
    from pgfleet.training.pairs import insert_pairs, parse_file

    parsed = parse_file(path)
    problems = [str(p) for p in parsed.problems]
    for problem in problems:
        console.print(f"[red]{path}:[/red] {problem}", highlight=False, soft_wrap=True)
    loaded, load = 0, bool(parsed.pairs) and (skip_bad or not problems)
    if load:
        with context.connection(autocommit=True) as conn:
            loaded = insert_pairs(conn, parsed.pairs)
    result = {"file": str(path), "valid": len(parsed.pairs), "bad": len(problems),
              "loaded": loaded, "already_stored": len(parsed.pairs) - loaded if load else 0,
              "problems": problems}
    if as_json:
        click.echo(json.dumps(result))
    elif problems and not skip_bad:
        console.print(f"{len(problems)} bad row(s): nothing loaded (fix them, or load the "
                      f"{len(parsed.pairs)} good ones with --skip-bad)")
    else:
        out.print(f"loaded {loaded} pair(s) from {path} ({len(parsed.pairs) - loaded} already "
                  f"stored, {len(problems)} bad)")
    if problems and not skip_bad:
        sys.exit(1)
    if not parsed.pairs:
        raise PgfleetError(f"{path}: no pairs in it")


@data.command("mine")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="docs to look at")
@click.option("--dry-run", is_flag=True, help="count what would be mined; store nothing")
@click.option("--json", "as_json", is_flag=True)
def data_mine(limit: int | None, dry_run: bool, as_json: bool) -> None:
    """Mine positive pairs from docs (headings, titles, questions, first sentences) into
    training_pairs. See `pgfleet train data mine --help` and docs/training.md."""
    from pgfleet.cli import context
    from pgfleet.training.pairs import insert_pairs, mine_docs

    with context.connection(autocommit=True) as conn:
        pairs, rules = mine_docs(conn, limit)
        stored = 0 if dry_run else insert_pairs(conn, pairs)
    result = {"docs": sum(rules.values()), "pairs": len(pairs), "stored": stored,
              "by_rule": dict(sorted(rules.items()))}
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(f"{len(pairs)} pair(s) mined from {result['docs']} doc(s): "
              + ", ".join(f"{k} {v}" for k, v in result["by_rule"].items())
              + ("" if dry_run else f"; {stored} new in training_pairs"))


# ------------------------------------------------------------------------------ jobs
for _spec in SPECS.values():
    train.add_command(job_command(_spec))


# ------------------------------------------------------------------------------ runs
def _age(when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - when).total_seconds()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


@train.command("status")
@click.argument("run_id", type=int, required=False)
@click.option("--limit", default=20, show_default=True)
@click.option("--watch", is_flag=True, help="refresh every 2 s until Ctrl-C")
@click.option("--json", "as_json", is_flag=True)
def train_status(run_id: int | None, limit: int, watch: bool, as_json: bool) -> None:
    """Training runs: status, progress, loss, heartbeat and what they produced."""
    from rich.live import Live

    from pgfleet.cli import context
    from pgfleet.training import runs

    with context.connection(autocommit=True) as conn:
        def rows() -> list[dict[str, Any]]:
            if run_id is None:
                return runs.listing(conn, limit)
            row = runs.get(conn, run_id)
            if row is None:
                raise PgfleetError(f"training run {run_id} does not exist")
            return [row]

        if as_json:
            click.echo(json.dumps([jsonable(r) for r in rows()], default=str))
            return
        if not watch:
            out.print(_runs_table(rows()))
            if run_id is not None:
                _print_run_details(rows()[0])
            return
        with Live(_runs_table(rows()), console=out, refresh_per_second=1) as live:
            try:
                while True:
                    time.sleep(2)
                    live.update(_runs_table(rows()))
            except KeyboardInterrupt:
                pass


def _runs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="training runs")
    for col in ("run", "task", "status", "progress", "phase", "loss", "heartbeat", "produced",
                "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["task"], r["status"],
                      progress_bar(r["step"], r["total_steps"]), r["phase"] or "-",
                      f"{r['loss']:.4f}" if r["loss"] is not None else "-",
                      _age(r["heartbeat_at"]) if r["status"] == "running" else "-",
                      r.get("produced") or (str(r["version_id"]) if r["version_id"] else "-"),
                      (r["error"] or "")[:120])
    return table


def _print_run_details(row: dict[str, Any]) -> None:
    out.print(f"arguments: {json.dumps(row['arguments'])}")
    out.print(f"created {row['created_at']:%Y-%m-%d %H:%M:%S}, worker {row['worker'] or '-'}, "
              f"claimed {row['claims']} time(s)")
    if row["error"]:
        out.print(f"error: {row['error']}")
    for name, path in (row["artifacts"] or {}).items():
        if path:
            out.print(f"{name}: {path}")


@train.command("cancel")
@click.argument("run_id", type=int)
def train_cancel(run_id: int) -> None:
    """Cancel a run: a queued run at once, a running one within a heartbeat."""
    from pgfleet.cli import context
    from pgfleet.training import runs

    with context.connection(autocommit=True) as conn:
        status = runs.cancel(conn, run_id)
    if status == "cancelled":
        out.print(f"training run {run_id} cancelled")
    elif status == "running":
        out.print(f"training run {run_id} will stop within a heartbeat (pgfleet train "
                  f"status {run_id})")
    else:
        out.print(f"training run {run_id} is already {status}; nothing to cancel")
