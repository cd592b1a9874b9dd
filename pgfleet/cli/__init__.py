"""The ``pgfleet`` command: everything a person does by hand.

Every command run with the same ``PGFLEET_HOME`` talks to the fleet ``pgfleet up`` started
there, unless ``PGFLEET_DATABASE_URL`` / ``PGFLEET_REDIS_URL`` point elsewhere.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import click
from rich.table import Table

from pgfleet.cli import beat, cache, metrics, sql, status, text2sql, train, train_text2sql
from pgfleet.cli.output import PgfleetGroup, console, out, setup_logging
from workers.errors import ConfigurationError, PgfleetError


@click.group(cls=PgfleetGroup)
@click.option("--log-level", default="INFO", show_default=True, envvar="PGFLEET_LOG_LEVEL")
def main(log_level: str) -> None:
    """pgfleet: automatic embeddings, search and model versions on PostgreSQL."""
    setup_logging(log_level.upper())


# ---------------------------------------------------------------------------------- up
@main.command()
@click.option("--demo", is_flag=True, help="load sample docs and show embedding progress")
@click.option("--demo-docs", default=500, show_default=True,
              help="documentation paragraphs to load with --demo, besides the samples")
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="the Prometheus endpoint on PGFLEET_METRICS_PORT")
def up(demo: bool, demo_docs: int, flower: bool, metrics: bool) -> None:
    """Start the fleet: embedded PostgreSQL and Redis when no URLs are set, migrations,
    a producer, one worker per queue, Celery beat, Flower and the Prometheus endpoint.
    Ctrl-C stops everything."""
    from pgfleet import context, fleet

    conf = context.settings()
    on_ready = _demo(conf, demo_docs) if demo else None
    # the generated Flower password goes to a terminal, never to a file (a log)
    sys.exit(fleet.up(conf, flower=flower, metrics=metrics, on_ready=on_ready,
                      announce=lambda text: out.print(text, highlight=False, soft_wrap=True),
                      show_secrets=sys.stdout.isatty()))


def _demo(conf, extra_docs: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    def on_ready(_supervisor):
        from pgfleet import context, corpus, loader

        docs = [(d["content"], d.get("metadata", {})) for d in corpus.sample_docs()]
        docs += [(p, {"source": "python docstrings"})
                 for p in corpus.stdlib_paragraphs(extra_docs)]
        total = {"target": 0, "baseline": 0}

        def load():
            with context.connection(conf, wait_s=10) as conn:
                total["baseline"] = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
                total["target"] = total["baseline"] + len(docs)
                for start in range(0, len(docs), 200):
                    loader.insert_batch(conn, docs[start:start + 200])
            logging.getLogger("pgfleet.demo").info(
                "demo: inserted %d docs; try: pgfleet search \"how do I make search faster\"",
                len(docs))

        threading.Thread(target=load, daemon=True, name="demo-loader").start()
        progress = Progress("[progress.description]{task.description}", BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        task = progress.add_task("embedding demo docs", total=len(docs))
        progress.start()
        last = [0.0]

        def tick():
            if time.monotonic() - last[0] < 0.5 or total["target"] == 0:
                return
            last[0] = time.monotonic()
            try:
                with context.connection(conf) as conn:
                    embedded = conn.execute(
                        "SELECT count(*) FROM embeddings WHERE chunk = 0 AND version_id = "
                        "(SELECT id FROM model_versions WHERE active ORDER BY traffic_percent "
                        "DESC, id LIMIT 1)").fetchone()[0]
            except PgfleetError:
                return
            progress.update(task, completed=max(0, min(len(docs), embedded - total["baseline"])))
            if embedded - total["baseline"] >= len(docs):
                progress.stop()
                total["target"] = 0
        return tick

    return on_ready


# ---------------------------------------------------------------------------------- flower
@main.command()
@click.option("--port", default=None, type=int, help="default: PGFLEET_FLOWER_PORT")
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int | None, address: str) -> None:
    """Run Flower for this fleet, always behind basic authentication
    (PGFLEET_FLOWER_USER, default admin, and PGFLEET_FLOWER_PASSWORD)."""
    import os

    from pgfleet import context

    conf = context.settings()
    password = os.environ.get("PGFLEET_FLOWER_PASSWORD")
    if not password:
        raise ConfigurationError("Flower never runs without authentication: set "
                                 "PGFLEET_FLOWER_PASSWORD (and PGFLEET_FLOWER_USER)")
    user = os.environ.get("PGFLEET_FLOWER_USER") or "admin"
    urls = context.urls(conf)
    env = dict(os.environ, FLOWER_BASIC_AUTH=f"{user}:{password}",
               PGFLEET_REDIS_URL=urls.redis_url, PGFLEET_DATABASE_URL=urls.database_url)
    argv = [sys.executable, "-m", "celery", "-A", "workers", "flower",
            f"--port={port if port is not None else conf.flower_port}", f"--address={address}"]
    os.execve(sys.executable, argv, env)


# ---------------------------------------------------------------------------------- db
@main.group()
def db() -> None:
    """The fleet's database."""


@db.command("migrate")
@click.option("--reader-login", is_flag=True,
              help="also let pgfleet_reader log in with the password in PGFLEET_READER_URL "
                   "(the session guarded SQL runs in); needs a user that may ALTER that role")
def db_migrate(reader_login: bool) -> None:
    """Create or upgrade the schema (idempotent; safe to run concurrently)."""
    from urllib.parse import unquote, urlsplit

    from pgfleet import context
    from pgfleet.fleet import READER_ROLE, enable_reader_login
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
    from pgfleet import context

    urls = context.urls()
    if not reader:
        click.echo(urls.database_url)
    elif urls.reader_url:
        click.echo(urls.reader_url)
    else:
        raise ConfigurationError("no reader login: set PGFLEET_READER_URL (the embedded "
                                 "default makes one at `pgfleet up`)")


# ---------------------------------------------------------------------------------- models
@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """Model versions: name, version, format, status, traffic and measured metrics."""
    from pgfleet import context

    with context.connection() as conn:
        rows = conn.execute(
            "SELECT v.id, v.name, v.version, v.kind, v.format, v.status, v.active, "
            "v.traffic_percent, v.dimensions, v.artifact, v.metrics, "
            "p.name || '@' || p.version AS parent, v.created_at "
            "FROM model_versions v LEFT JOIN model_versions p ON p.id = v.parent_id "
            "ORDER BY v.id").fetchall()
    keys = ("id", "name", "version", "kind", "format", "status", "active", "traffic_percent",
            "dimensions", "artifact", "metrics", "parent", "created_at")
    items = [dict(zip(keys, r, strict=True)) for r in rows]
    if as_json:
        for item in items:
            item["created_at"] = item["created_at"].isoformat()
        click.echo(json.dumps(items))
        return
    table = Table(title="model versions")
    for col in ("id", "version", "format", "status", "active", "traffic", "size", "docs/s (best)",
                "cosine to parent", "top-10 overlap"):
        table.add_column(col)
    for item in items:
        m = item["metrics"] or {}
        size = m.get("file_bytes", {}).get("onnx_int8")
        speed = m.get("docs_per_s", {}).get("onnx_int8", {}).get("best_docs_per_s")
        fid = m.get("fidelity_int8", {})
        table.add_row(str(item["id"]), f"{item['name']}@{item['version']}", item["format"],
                      item["status"], "yes" if item["active"] else "no",
                      f"{item['traffic_percent']}%", f"{size / 1e6:.1f} MB" if size else "-",
                      str(speed or "-"), str(fid.get("cosine_mean", "-")),
                      str(fid.get("top10_overlap", "-")))
    out.print(table)


# ---------------------------------------------------------------------------------- failures
@main.command()
@click.option("--retry", is_flag=True, help="clear the failures and queue their docs again")
@click.option("--version", "version_ref", default=None, help="only this version (with --retry)")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failures(retry: bool, version_ref: str | None, limit: int, as_json: bool) -> None:
    """Docs that could not be embedded, with why; --retry queues them again."""
    from pgfleet import context
    from workers import db as wdb
    from workers.versions import embedding_version

    with context.connection() as conn:
        if retry:
            version_id = embedding_version(conn, version_ref).version_id if version_ref else None
            with conn.transaction():
                row = wdb.fetch_one(conn, "retry_failures", {"version_id": version_id})
            out.print(f"queued {row['queued']} doc(s) again")
            return
        rows = wdb.fetch_all(conn, "list_failures", {"limit": limit})
    if as_json:
        click.echo(json.dumps([{**r, "first_failed_at": r["first_failed_at"].isoformat(),
                                "last_failed_at": r["last_failed_at"].isoformat()}
                               for r in rows]))
        return
    table = Table(title=f"failures (latest {limit})")
    for col in ("doc", "version", "reason", "attempts", "last error", "last failed"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["doc_id"]), r["version"], r["reason"], str(r["attempts"]),
                      (r["last_error"] or "")[:120], r["last_failed_at"].strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


# ---------------------------------------------------------------------------------- verify
@main.command()
@click.option("--json", "as_json", is_flag=True)
def verify(as_json: bool) -> None:
    """Check that every doc has exactly the right vectors; exit 1 if anything is wrong."""
    from pgfleet import context
    from pgfleet.verify import consistent
    from pgfleet.verify import verify as run_verify

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


# ---------------------------------------------------------------------------------- load
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", default=500, show_default=True)
def load(paths: tuple[Path, ...], batch_size: int) -> None:
    """Load text, markdown or JSONL files (or folders of them) into docs."""
    from rich.progress import Progress

    from pgfleet import context, loader

    try:
        files = loader.files_under(paths)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    result = loader.LoadResult()
    with context.connection() as conn, Progress(console=console) as progress:
        task = progress.add_task("loading", total=len(files))
        batch: list[tuple[str, dict]] = []
        places: list[tuple[str, int | None]] = []
        for path in files:
            for content, metadata, line in loader.read_located(path, result.problems):
                batch.append((content, metadata))
                places.append((str(path), line))
                if len(batch) >= batch_size:
                    result.inserted += loader.insert_batch(conn, batch, result.problems,
                                                           places)
                    batch, places = [], []
            progress.advance(task)
        if batch:
            result.inserted += loader.insert_batch(conn, batch, result.problems, places)
    for problem in result.problems:
        console.print(f"[yellow]skipped[/yellow] {problem}", highlight=False)
    out.print(f"inserted {result.inserted} docs from {len(files)} file(s)"
              + (f"; {len(result.problems)} problem(s)" if result.problems else ""))
    if result.problems:
        sys.exit(1)


# ---------------------------------------------------------------------------------- search
@main.command()
@click.argument("text", required=False)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--version", "version_ref", default=None,
              help="model version: id, v1 or name@v1 (default: routed by the A/B split)")
@click.option("--key", default=None, help="user or session id: sticky A/B assignment")
@click.option("--name", default=None, help="model name to route within (default: the main one)")
@click.option("--file", "query_file", type=click.File("r", encoding="utf-8"),
              help="one query per line")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per query")
def search(text: str | None, k: int, version_ref: str | None, key: str | None, name: str | None,
           query_file, as_json: bool) -> None:
    """Nearest docs to TEXT (or to each line of --file)."""
    from pgfleet import context
    from pgfleet.search import routed_search
    from workers.engines import load_for

    if (text is None) == (query_file is None):
        raise click.UsageError("give a query TEXT or --file, not both")
    queries = [text] if text is not None else [q.strip() for q in query_file if q.strip()]
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        for query in queries:
            answer = routed_search(conn, lambda spec: load_for(spec, conf), query, k,
                                   version_ref=version_ref, key=key, name=name)
            if as_json:
                click.echo(json.dumps(answer.as_json()))
                continue
            note = (f", fell back from {answer.route.fallback_from} (still backfilling)"
                    if answer.route.fallback_from else "")
            table = Table(title=f"{query!r} ({answer.route.spec.label}{note}; "
                                f"{answer.latency_ms:.0f} ms)", title_justify="left")
            table.add_column("doc", justify="right")
            table.add_column("score", justify="right")
            table.add_column("content", overflow="fold")
            for h in answer.hits:
                table.add_row(str(h.doc_id), f"{h.score:.3f}", h.content[:300])
            out.print(table)


# ---------------------------------------------------------------------------------- ab
@main.group()
def ab() -> None:
    """A/B tests between model versions."""


@ab.command("set")
@click.argument("name")
@click.argument("split", nargs=-1, required=True)
def ab_set(name: str, split: tuple[str, ...]) -> None:
    """Set the split: pgfleet ab set NAME v1=80 v2=20 [v3=shadow]."""
    from pgfleet import abtest, context
    from workers.ab import parse_split

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
    from pgfleet import abtest, context

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
    from pgfleet import abtest, context

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
    from pgfleet import abtest, context

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
    from pgfleet import context

    with context.connection(autocommit=True) as conn:
        conn.execute("INSERT INTO search_feedback (log_id, doc_id, relevance) VALUES (%s, %s, %s)",
                     (log_id, doc_id, relevance))
    out.print("recorded")


@ab.command("status")
@click.argument("name")
@click.option("--since", default="1d", show_default=True, help="e.g. 30m, 12h, 7d")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="draw the latency distributions per version to this PNG")
@click.option("--json", "as_json", is_flag=True)
def ab_status(name: str, since: str, plot_path: str | None, as_json: bool) -> None:
    """Per version: requests, latency, cache hits, errors, quality; and the verdict."""
    from pgfleet import abtest, context

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


# ---------------------------------------------------------------------------------- bench
@main.group(invoke_without_command=True)
@click.option("--docs", default=5000, show_default=True, help="paragraphs in the backlog")
@click.option("--texts", type=click.Choice(["paragraphs", "short"]), default="paragraphs",
              show_default=True)
@click.option("--short-docs", default=2000, show_default=True,
              help="short rows for the batching gain")
@click.option("--idle-samples", default=30, show_default=True)
@click.option("--batching/--no-batching", default=True, help="measure the batching gain")
@click.option("--torch/--no-torch", "torch_", default=True,
              help="measure the torch queue, the cache and idle latency")
@click.option("--int8/--no-int8", default=True, help="measure the ONNX INT8 queue too")
@click.option("--scale", type=click.IntRange(min=0), default=0,
              help="instead of the other phases: a backlog of this many docs (e.g. 200000), "
                   "with throughput and every process's memory sampled as it drains")
@click.option("--scale-engine", type=click.Choice(["int8", "torch"]), default="int8",
              show_default=True, help="the queue the scale run goes through")
@click.option("--sample-s", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="seconds between the scale run's samples")
@click.option("--logs", "logs_dir", type=click.Path(path_type=Path), default=None,
              help="copy the fleet's logs here")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench(ctx: click.Context, docs: int, texts: str, short_docs: int, idle_samples: int,
          batching: bool, torch_: bool, int8: bool, scale: int, scale_engine: str,
          sample_s: float, logs_dir: Path | None, as_json: bool) -> None:
    """The fleet against the bare engines on this machine, side by side in one run: backlog
    throughput (torch and ONNX INT8), idle latency, batching gain and cache cost. Starts its
    own embedded servers and fleet in a temporary directory.

    `pgfleet bench text2sql` scores a text2sql version on the defog benchmark instead."""
    from pgfleet import bench as bench_mod
    from pgfleet import context

    if ctx.invoked_subcommand is not None:
        return

    config = bench_mod.BenchConfig(docs=docs, texts=texts, short_docs=short_docs,
                                   idle_samples=idle_samples, batching=batching, torch=torch_,
                                   int8=int8, scale=scale, scale_engine=scale_engine,
                                   sample_s=sample_s, logs_dir=logs_dir)
    result = bench_mod.run(config, context.settings())
    if as_json:
        click.echo(json.dumps(result))
        return
    table = Table(title="pgfleet bench")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key == "scale":
            value = {k: v for k, v in value.items() if k != "samples"}
        if key != "machine":
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)
    out.print(f"machine: {result['machine']}")


@bench.command("text2sql")
@click.option("--version", default=None,
              help="the text2sql version (id, v2, name@v2; default: the active one)")
@click.option("--beams", type=click.IntRange(min=1, max=16), default=4, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="the first N questions only")
@click.option("--reference", type=click.Choice(["gold", "select1"]), default=None,
              help="score the benchmark's gold SQL (expect 100%) or SELECT 1 (expect ~0%) "
                   "instead of a model: the scorer's sanity checks")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="write the full report (every question) as JSON here")
@click.option("--json", "as_json", is_flag=True)
def bench_text2sql(version: str | None, beams: int, limit: int | None, reference: str | None,
                   out_path: Path | None, as_json: bool) -> None:
    """A text2sql version on the defog benchmark (../shared/benchmarks/text2sql/defog or
    $PGFLEET_DEFOG_DIR): execution accuracy overall, per category and per database. Its
    databases are loaded on the fleet's PostgreSQL server as defog_NAME."""
    from pgfleet import bench_text2sql, context

    urls = context.urls()
    report = bench_text2sql.run(urls.database_url, reader_url=urls.reader_url, version=version,
                                beams=beams, limit=limit, reference=reference)
    if out_path is not None:
        out_path.write_text(json.dumps(report, indent=1, default=str), "utf-8")
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "rows"}, default=str))
        return
    out.print(f"{report['model']} on {report['scored']} defog questions: execution accuracy "
              f"[bold]{report['accuracy']:.1%}[/bold] ({report['correct']} right), "
              f"{report['seconds']} s; {len(report['excluded'])} excluded (gold fails here)")
    for key, title in (("by_category", "category"), ("by_database", "database")):
        table = Table(title=f"per {title}")
        for col in (title, "right", "questions", "accuracy"):
            table.add_column(col, justify="right" if col != title else "left")
        for name, row in report[key].items():
            table.add_row(name, str(row["correct"]), str(row["total"]), f"{row['accuracy']:.1%}")
        out.print(table)


main.add_command(train.train)
train.train.add_command(train_text2sql.train_text2sql)
train.train.add_command(train_text2sql.distill_text2sql)
for command in (sql.sql, status.status, text2sql.text2sql, cache.cache, beat.beat,
                metrics.metrics):
    main.add_command(command)
