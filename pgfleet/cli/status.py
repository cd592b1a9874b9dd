"""``pgfleet status``: the fleet at a glance, once or refreshed (``--watch``), or as JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from pgfleet.cli.output import out, progress_bar
from pgfleet.errors import PgfleetError


@click.command("status")
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.5), default=2.0,
              show_default=True, help="seconds between refreshes with --watch")
@click.option("--json", "as_json", is_flag=True,
              help="machine-readable output (with --watch: one JSON object per line)")
def status(watch: bool, interval_s: float, as_json: bool) -> None:
    """Model versions (coverage, pending, lag), queues (depth, consumers), workers (queues,
    last heartbeat), A/B splits, recent training runs and failures."""
    from pgfleet.cli import context
    from pgfleet.ops.status import WorkerWatch, collect

    # the event listener's "Connected to redis://..." is not part of the dashboard
    logging.getLogger("kombu").setLevel(logging.WARNING)

    conf = context.settings()
    redis_url = context.urls(conf).redis_url
    api_url = _api_url(conf)

    def gather(workers: WorkerWatch | None = None) -> dict[str, Any]:
        with context.connection(conf, autocommit=True) as conn:
            return collect(conn, redis_url, watch=workers, api_url=api_url)

    if not watch:
        data = gather()
        if as_json:
            click.echo(json.dumps(data))
        else:
            out.print(render(data))
        return
    with WorkerWatch(redis_url) as workers:
        if as_json:
            _watch_json(lambda: gather(workers), interval_s)
        else:
            _watch_live(lambda: gather(workers), interval_s)


def _api_url(conf) -> str | None:
    """PGFLEET_API_URL, else the API ``pgfleet up`` runs under PGFLEET_HOME."""
    import os

    from pgfleet.state import read_state

    if os.environ.get("PGFLEET_API_URL"):
        return os.environ["PGFLEET_API_URL"]
    state = read_state(conf.home) or {}
    return state.get("api_url")


@contextlib.contextmanager
def _until_interrupted() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM. The first signal ends the loop between two
    refreshes (never inside a query or a broadcast, which a KeyboardInterrupt could leave
    half done and hang on); a second one interrupts at once."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _watch_json(gather, interval_s: float) -> None:
    with _until_interrupted() as stop:
        while not stop.is_set():
            click.echo(json.dumps(gather()))
            stop.wait(interval_s)


def _watch_live(gather, interval_s: float) -> None:
    from rich.live import Live

    with _until_interrupted() as stop:
        data = gather()
        with Live(render(data), console=out, refresh_per_second=4) as live:
            while not stop.wait(interval_s):
                try:
                    data = gather()
                    live.update(render(data))
                except PgfleetError as exc:
                    # keep the last view; a server that restarts is back at the next refresh
                    live.update(render(data, problem=str(exc)))


# ------------------------------------------------------------------------------ rendering
def render(data: dict[str, Any], *, problem: str | None = None) -> Group:
    """The dashboard for what :func:`pgfleet.ops.status.collect` gathered."""
    parts: list[Any] = [_headline(data)]
    if problem:
        parts.append(Text(f"cannot refresh: {problem} (showing the last view)", style="red"))
    parts += [_versions(data["versions"])]
    if data.get("sources"):
        parts.append(_sources(data["sources"]))
    parts += [_queues(data["queues"]), _workers(data["workers"])]
    if data.get("ab"):
        parts.append(_splits(data["ab"]))
    if data.get("training"):
        parts.append(_training(data["training"]))
    if data.get("failures"):
        parts.append(_failures(data["failures"]))
    return Group(*parts)


def _headline(data: dict[str, Any]) -> Text:
    online = sum(1 for w in data["workers"] if w["online"])
    pending = sum(v["pending"] for v in data["versions"] if v["active"])
    waiting = [q["depth"] for q in data["queues"] if q["depth"] is not None]
    line = Text(f"pgfleet status at {data['generated_at']}: ", style="bold")
    line.append(f"{online} worker(s) online", style="green" if online else "red")
    line.append(f", {pending} doc(s) pending, ")
    line.append(f"{sum(waiting)} message(s) waiting" if waiting else "queues unknown",
                style=None if waiting else "yellow")
    api = data.get("api")
    if api is not None:
        line.append(", API ")
        if api["up"]:
            loaded = ", ".join(e["version"] for e in api["engines"]) or "no model loaded yet"
            line.append(f"up at {api['url']} ({loaded})", style="green")
        else:
            line.append(f"not answering at {api['url']}", style="red")
    return line


def lag_text(seconds: float | None) -> Text:
    """Oldest pending age, coloured: under 10 s is fine, under a minute is behind."""
    if seconds is None:
        return Text("-", style="green")
    style = "green" if seconds < 10 else "yellow" if seconds < 60 else "red"
    shown = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    return Text(shown, style=style)


def age_text(seconds: float | None, *, stale_s: float = 10.0) -> Text:
    if seconds is None:
        return Text("-", style="dim")
    return Text(f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago",
                style="green" if seconds < stale_s else "red")


def _versions(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="model versions", title_justify="left")
    for col in ("version", "format", "active", "docs", "embedded", "coverage", "pending",
                "failed", "lag (oldest pending)"):
        table.add_column(col, justify="left" if col in ("version", "format", "active",
                                                        "coverage") else "right")
    for v in rows:
        table.add_row(f"{v['name']}@{v['version']}", v["format"],
                      "yes" if v["active"] else Text("no", style="dim"), str(v["docs"]),
                      str(v["embedded"]),
                      progress_bar(v["embedded"], v["docs"]) if v["docs"] else "-",
                      str(v["pending"]),
                      Text(str(v["failed"]), style="red" if v["failed"] else ""),
                      lag_text(v["oldest_pending_s"]) if v["active"] else Text("-", "dim"))
    return table


def _sources(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="sources", title_justify="left")
    for col in ("source", "version", "rows embedded", "chunks", "pending", "failed", "lag"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["source"], r["version"], str(r["embedded"]), str(r["chunks"]),
                      str(r["pending"]), str(r["failed"]), lag_text(r["oldest_pending_s"]))
    return table


def _queues(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="queues", title_justify="left")
    table.add_column("queue")
    table.add_column("waiting", justify="right")
    table.add_column("consumers")
    for q in rows:
        depth = Text("?", style="yellow") if q["depth"] is None else Text(str(q["depth"]))
        if q["consumers"]:
            consumers = Text(", ".join(q["consumers"]))
        else:
            consumers = Text("none online", style="red" if q["depth"] else "dim")
        table.add_row(q["name"], depth, consumers)
    return table


def _workers(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="workers", title_justify="left")
    for col in ("worker", "status", "queues", "last heartbeat"):
        table.add_column(col)
    for w in rows:
        table.add_row(w["name"], Text("online", "green") if w["online"]
                      else Text("no reply", "red"), ", ".join(w["queues"]) or "-",
                      age_text(w["last_heartbeat_age_s"]))
    if not rows:
        table.add_row(Text("none answered", style="red"), "", "", "")
    return table


def split_text(split: dict[str, int]) -> str:
    return " · ".join(f"{v} {'shadow' if p == 0 else f'{p}%'}" for v, p in split.items())


def _splits(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="A/B splits (pgfleet ab status NAME for the comparison)",
                  title_justify="left")
    for col in ("model", "kind", "split", "last change"):
        table.add_column(col)
    for s in rows:
        change = f"{s['last_action']} at {s['changed_at'][:19]}" if s["changed_at"] else "-"
        table.add_row(s["name"], s["kind"], split_text(s["split"]), change)
    return table


def _training(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="recent training runs (pgfleet train status for more)",
                  title_justify="left")
    for col in ("run", "task", "status", "progress", "phase", "loss", "heartbeat", "produced"):
        table.add_column(col)
    styles = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "dim"}
    for r in rows:
        table.add_row(str(r["id"]), r["task"], Text(r["status"], styles.get(r["status"], "")),
                      progress_bar(r["step"], r["total_steps"]), r["phase"] or "-",
                      f"{r['loss']:.4f}" if r["loss"] is not None else "-",
                      age_text(r["heartbeat_age_s"], stale_s=60.0)
                      if r["status"] == "running" else Text("-", "dim"),
                      r["produced"] or "-")
    return table


def _failures(rows: list[dict[str, Any]], limit: int = 5) -> Table:
    table = Table(title="recent failures (pgfleet failures for more, --retry to queue again)",
                  title_justify="left")
    for col in ("doc", "version", "reason", "attempts", "last error"):
        table.add_column(col)
    for f in rows[:limit]:
        table.add_row(str(f["doc_id"]), f["version"], f["reason"], str(f["attempts"]),
                      Text((f["last_error"] or "")[:100]))
    return table
