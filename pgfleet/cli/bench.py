"""``pgfleet bench``: the fleet against the bare engines on this machine; ``pgfleet bench
text2sql``: a text2sql version on the defog benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.group(invoke_without_command=True)
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
    from pgfleet.cli import context
    from pgfleet.ops import bench as bench_mod

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
    from pgfleet.cli import context
    from pgfleet.ops import bench_text2sql

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


@bench.command("serve")
@click.option("--clients", default="1,16,64", show_default=True,
              help="concurrent closed-loop clients per measurement, separated by commas")
@click.option("--docs", type=click.IntRange(min=1), default=5000, show_default=True,
              help="paragraphs in each backlog")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=8.0, show_default=True,
              help="length of each measured HTTP phase")
@click.option("--logs", "logs_dir", type=click.Path(path_type=Path), default=None,
              help="copy the fleet's and the API's logs here")
@click.option("--client", "http_client", type=click.Choice(["aiohttp", "httpx"]),
              default="aiohttp", show_default=True,
              help="the load clients' HTTP library (they run on the measured machine)")
@click.option("--json", "as_json", is_flag=True)
def bench_serve(clients: str, docs: int, seconds: float, logs_dir: Path | None,
                http_client: str, as_json: bool) -> None:
    """The HTTP API against the bare engine in one run: search and embeddings requests/s
    and p50/p95/p99 at each client count, idle and cache-hit latency, search latency and the
    backlog's docs/s while the fleet embeds a backlog, and a Celery round trip to the worker
    (the design that answers queries on the workers). Starts its own embedded servers, fleet
    and API in a temporary directory."""
    from pgfleet.cli import context
    from pgfleet.ops import bench_serve as serve_mod

    try:
        counts = serve_mod.parse_clients(clients)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--clients") from None
    config = serve_mod.ServeBenchConfig(clients=counts, docs=docs, seconds=seconds,
                                        logs_dir=logs_dir, client=http_client)
    result = serve_mod.run(config, context.settings())
    if as_json:
        click.echo(json.dumps(result))
        return
    table = Table(title="pgfleet bench serve")
    for col in ("endpoint", "clients", "requests/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    rows = [("bare search, one at a time", "1", result["bare"]["search"])]
    rows += [(endpoint, n, row) for endpoint in ("search", "embeddings")
             for n, row in result["http"][endpoint].items()]
    rows += [("search, cache hit", "1", result["cache_hit"]),
             ("search during the backlog", "1", result["backlog"]["with_search"]["search"]),
             ("celery.ping, idle", "1", result["broker"]["ping_idle"]),
             ("celery.ping, during the backlog", "1", result["broker"]["ping_backlog"])]
    for name, n, row in rows:
        table.add_row(name, str(n), *(str(row.get(k)) for k in
                                      ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")))
    out.print(table)
    embeddings = result["bare"]["embeddings"]
    out.print(f"bare embeddings: {embeddings['best_texts_per_s']} texts/s (batch "
              f"{embeddings['best_batch']}); backlog {result['backlog']['idle']['docs_per_s']} "
              f"docs/s idle, {result['backlog']['with_search']['docs_per_s']} with one search "
              f"client")
    targets = Table(title="targets")
    for col in ("figure", "value", "target", "met"):
        targets.add_column(col)
    for name, row in result["targets"].items():
        targets.add_row(name, str(row["value"]), row["target"], str(row["met"]))
    out.print(targets)
    out.print(f"machine: {result['machine']}")
    out.print(f"settings: {result['settings']}")


@bench.command("sources")
@click.option("--rows", type=click.IntRange(min=0), default=20_000, show_default=True,
              help="rows in the throughput backlog (0: no throughput phase)")
@click.option("--inserts", type=click.IntRange(min=0), default=2000, show_default=True,
              help="single-row inserts per measurement of the triggers' cost (0: none)")
@click.option("--retrieval/--no-retrieval", default=True,
              help="truncation against chunking and hybrid on long pages")
@click.option("--chunk-tokens", type=click.IntRange(16, 8192), default=200, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_sources(rows: int, inserts: int, retrieval: bool, chunk_tokens: int, overlap: int,
                  as_json: bool) -> None:
    """Sources: retrieval on long pages (MRR@10, recall@10 for truncation, tokens, markdown
    and hybrid), the triggers' cost on inserts, and a backlog's chunks/s against the bare
    model. Starts its own embedded servers and fleet in a temporary directory."""
    from pgfleet.cli import context
    from pgfleet.ops import bench_sources as mod

    config = mod.SourcesBenchConfig(rows=rows, retrieval=retrieval, inserts=inserts,
                                    throughput=rows > 0, chunk_tokens=chunk_tokens,
                                    overlap=overlap)
    result = mod.run(config, context.settings())
    if as_json:
        click.echo(json.dumps(result))
        return
    if "retrieval" in result:
        table = Table(title=f"retrieval: {result['retrieval']['pages']} pages, queries "
                            f"{result['retrieval']['queries']}")
        for col in ("mode", "deep MRR@10", "deep recall@10", "gist MRR@10", "gist recall@10"):
            table.add_column(col)
        for mode, score in result["retrieval"]["scores"].items():
            table.add_row(mode, str(score["deep"]["mrr@10"]), str(score["deep"]["recall@10"]),
                          str(score["gist"]["mrr@10"]), str(score["gist"]["recall@10"]))
        out.print(table)
    if "inserts" in result:
        out.print(f"inserts: {result['inserts']}")
    if "throughput" in result:
        out.print(f"throughput: {result['throughput']}")
