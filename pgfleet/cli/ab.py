"""``pgfleet ab ...``: A/B tests between model versions: set, promote, roll back or retire a
split, record feedback, and compare the versions of a split."""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import console, out


@click.group()
def ab() -> None:
    """A/B tests between model versions."""


@ab.command("set")
@click.argument("name")
@click.argument("split", nargs=-1, required=True)
def ab_set(name: str, split: tuple[str, ...]) -> None:
    """Set the split: pgfleet ab set NAME v1=80 v2=20 [v3=shadow]."""
    from pgfleet.cli import context
    from pgfleet.models import abtest
    from pgfleet.models.splits import parse_split

    try:
        parsed = parse_split(split)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        result = abtest.set_split(conn, name, parsed, wait_s=conf.ab_lock_wait_s)
    out.print(f"{name}: " + ", ".join(f"{v}={'shadow' if p == 0 else f'{p}%'}"
                                      for v, p in parsed.items()))
    for version, count in result["backfill_queued"].items():
        out.print(f"{version}: backfilling {count} docs (progress: pgfleet ab status {name})")
    _print_split_problems(result)


def _print_split_problems(result: dict) -> None:
    """What held a split change up: it was applied, and these still need attention."""
    for problem in result["problems"]:
        console.print(f"[yellow]note:[/yellow] {problem}", highlight=False, soft_wrap=True)


@ab.command("promote")
@click.argument("name")
@click.argument("version")
def ab_promote(name: str, version: str) -> None:
    """All traffic to VERSION in one transaction; the others stay as shadows for rollback."""
    from pgfleet.cli import context
    from pgfleet.models import abtest

    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        result = abtest.promote(conn, name, version, wait_s=conf.ab_lock_wait_s)
    out.print(f"{name}: {version} serves 100%; kept as shadows: "
              f"{', '.join(v for v, p in result['split'].items() if p == 0) or 'none'}")
    _print_split_problems(result)


@ab.command("rollback")
@click.argument("name")
def ab_rollback(name: str) -> None:
    """Restore the split in force before the last change."""
    from pgfleet.cli import context
    from pgfleet.models import abtest

    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        result = abtest.rollback(conn, name, wait_s=conf.ab_lock_wait_s)
    out.print(f"{name}: back to " + ", ".join(f"{v}={p}%" for v, p in result["split"].items()))
    _print_split_problems(result)


@ab.command("retire")
@click.argument("name")
@click.argument("version")
def ab_retire(name: str, version: str) -> None:
    """Stop embedding for VERSION; its vectors are dropped after PGFLEET_RETIRE_GRACE_S."""
    from pgfleet.cli import context
    from pgfleet.models import abtest

    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        abtest.retire(conn, name, version, wait_s=conf.ab_lock_wait_s)
    out.print(f"{name}@{version} retired")


@ab.command("feedback")
@click.argument("log_id", type=int)
@click.argument("doc_id", type=int)
@click.option("--relevance", default=1.0, type=click.FloatRange(0, 1), show_default=True)
def ab_feedback(log_id: int, doc_id: int, relevance: float) -> None:
    """Record that the user of logged search LOG_ID chose DOC_ID (applications can insert
    into search_feedback directly)."""
    import schema
    from pgfleet.cli import context

    with context.connection(autocommit=True) as conn:
        conn.execute(schema.query("record_feedback"),
                     {"log_id": log_id, "doc_id": doc_id, "relevance": relevance})
    out.print("recorded")


@ab.command("status")
@click.argument("name")
@click.option("--since", default="1d", show_default=True, help="e.g. 30m, 12h, 7d")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="draw the latency distributions per version to this PNG")
@click.option("--json", "as_json", is_flag=True)
def ab_status(name: str, since: str, plot_path: str | None, as_json: bool) -> None:
    """Per version: requests, latency, cache hits, errors, quality; and the verdict."""
    from pgfleet.cli import context
    from pgfleet.models import abtest

    with context.connection(autocommit=True) as conn:
        data = abtest.report(conn, name, _duration(since))
        if plot_path:
            drawn = abtest.plot_latencies(conn, name, _duration(since), plot_path)
            console.print(f"latency distributions of {drawn} searches drawn to {plot_path}")
    if as_json:
        click.echo(json.dumps(data))
        return
    if data.get("kind") == "text2sql":
        _print_text2sql_report(data, since)
        return
    table = Table(title=f"{name}, last {since}")
    for col in ("version", "traffic", "requests", "mean ms", "p50 ms", "p95 ms", "cache hits",
                "errors", "feedback", "MRR", "coverage"):
        table.add_column(col, justify="right")
    for v in data["versions"]:
        lat = v["latency_ms"]
        table.add_row(v["version"], "shadow" if v["shadow"] else f"{v['traffic_percent']}%",
                      str(v["requests"]), *(f"{lat[q]:.1f}" if lat[q] is not None else "-"
                                            for q in ("mean", "p50", "p95")),
                      f"{v['cache_hit_rate']:.0%}" if v["cache_hit_rate"] is not None else "-",
                      str(v["errors"]), str(v["feedback"]),
                      f"{v['mrr']:.3f}" if v["mrr"] is not None else "-",
                      f"{v['coverage']:.0%}" + (f" ({v['backfill_pending']} to backfill)"
                                                if v["backfill_pending"] else ""))
    out.print(table)
    for comparison in data["comparisons"]:
        out.print(comparison["verdict"])


def _print_text2sql_report(data: dict, since: str) -> None:
    table = Table(title=f"{data['name']} (text-to-SQL), last {since}")
    for col in ("version", "traffic", "requests", "mean ms", "p50 ms", "p95 ms", "no SQL",
                "answered", "held-out accuracy"):
        table.add_column(col, justify="right")
    for v in data["versions"]:
        lat = v["latency_ms"]
        table.add_row(v["version"], f"{v['traffic_percent']}%", str(v["requests"]),
                      *(f"{lat[q]:.1f}" if lat[q] is not None else "-"
                        for q in ("mean", "p50", "p95")),
                      str(v["errors"]),
                      f"{v['answered_rate']:.0%}" if v["answered_rate"] is not None else "-",
                      f"{v['execution_accuracy_held_out']:.1%}"
                      if v["execution_accuracy_held_out"] is not None else "-")
    out.print(table)
    for comparison in data["comparisons"]:
        out.print(comparison["verdict"])


def _duration(text: str):
    import datetime as dt
    import re

    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise click.UsageError(f"--since {text!r}: write a number and s, m, h or d (e.g. 1d)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return dt.timedelta(**{unit: int(match.group(1))})
