"""``pgfleet train ...``: training data, training jobs on the training queue, their runs."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from workers.errors import PgfleetError

FINAL = ("succeeded", "failed", "cancelled")


def _console():
    from pgfleet.cli import console, out

    return console, out


@click.group()
def train() -> None:
    """Jobs of the training queue, their data and their runs."""


# ------------------------------------------------------------------------------ data
@train.group("data")
def data() -> None:
    """Training pairs: (text_a, text_b, optional score in [0, 1])."""


@data.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-bad", is_flag=True,
              help="load the good rows even if some are bad (default: load nothing then)")
@click.option("--json", "as_json", is_flag=True)
def data_load(path: Path, skip_bad: bool, as_json: bool) -> None:
    """Load pairs from a CSV (header text_a,text_b[,score]) or JSONL file. Every bad row is
    reported with its line; by default nothing is loaded when any row is bad."""
    from pgfleet import context
    from workers.training.pairs import insert_pairs, parse_file

    console, out = _console()
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
    from pgfleet import context
    from workers.training.pairs import insert_pairs, mine_docs

    _, out = _console()
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
def _common(func):
    func = click.option("--json", "as_json", is_flag=True)(func)
    func = click.option("--timeout", "timeout_s", default=24 * 3600, show_default=True,
                        help="seconds to wait for the run")(func)
    func = click.option("--wait/--no-wait", default=True, show_default=True,
                        help="follow the run until it ends (Ctrl-C stops following, not "
                             "the run)")(func)
    func = click.option("--local", is_flag=True,
                        help="run in this process instead of on the training queue")(func)
    return func


@train.command("embeddings")
@click.option("--from", "from_version", default="v1", show_default=True,
              help="the torch version to fine-tune: id, v1 or name@v1")
@click.option("--pairs", type=click.Choice(["auto", "table", "mined"]), default="auto",
              show_default=True, help="training_pairs, pairs mined from docs, or the table "
                                      "when it holds pairs and else mined")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--learning-rate", type=float, default=2e-5, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True,
              help="pairs held out for the before/after metric")
@click.option("--max-pairs", type=click.IntRange(min=0), default=0, help="0: all")
@click.option("--max-seq-length", type=click.IntRange(min=0), default=0,
              help="tokens per text while training (0: the model's)")
@_common
def train_embeddings(from_version: str, pairs: str, epochs: int, batch_size: int,
                     learning_rate: float, seed: int, eval_fraction: float, max_pairs: int,
                     max_seq_length: int, local: bool, wait: bool, timeout_s: int,
                     as_json: bool) -> None:
    """Fine-tune an embedding version on pairs; register the result (inactive) with MRR@10
    and recall@10 of the base and the new model on held-out pairs."""
    options = {"from_version": from_version, "pairs": pairs, "epochs": epochs,
               "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
               "eval_fraction": eval_fraction, "max_pairs": max_pairs,
               "max_seq_length": max_seq_length}
    _submit("train_embeddings", options, local=local, wait=wait, timeout_s=timeout_s,
            as_json=as_json)


@train.command("distill")
@click.option("--from", "from_version", default="v1", show_default=True,
              help="the teacher: a torch version")
@click.option("--layers", type=click.IntRange(min=0), default=0,
              help="transformer layers the student keeps (0: half the teacher's)")
@click.option("--student", default="", help="a smaller model (path or hub id) instead of "
                                            "keeping layers")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=2e-4, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--max-texts", type=click.IntRange(min=10), default=5000, show_default=True,
              help="docs to distill on")
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--max-seq-length", type=click.IntRange(min=0), default=0)
@_common
def train_distill(from_version: str, layers: int, student: str, epochs: int, batch_size: int,
                  learning_rate: float, seed: int, max_texts: int, eval_fraction: float,
                  max_seq_length: int, local: bool, wait: bool, timeout_s: int,
                  as_json: bool) -> None:
    """Distill a version (the teacher) into a smaller student; register the student with its
    parameters, size, docs/s and the share of the teacher's MRR@10 it keeps."""
    options = {"from_version": from_version, "layers": layers, "student": student,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "seed": seed, "max_texts": max_texts, "eval_fraction": eval_fraction,
               "max_seq_length": max_seq_length}
    _submit("distill_embeddings", options, local=local, wait=wait, timeout_s=timeout_s,
            as_json=as_json)


@train.command("quantize")
@click.option("--from", "from_version", default="v1", show_default=True,
              help="the torch version to quantize: id, v1 or name@v1")
@click.option("--sample", default=200, show_default=True, help="docs to measure on")
@_common
def train_quantize(from_version: str, sample: int, local: bool, wait: bool, timeout_s: int,
                   as_json: bool) -> None:
    """Export a version to ONNX, quantize it to INT8, measure and register it."""
    _submit("quantize", {"from_version": from_version, "sample": sample}, local=local,
            wait=wait, timeout_s=timeout_s, as_json=as_json)


def _submit(task: str, options: dict[str, Any], *, local: bool, wait: bool, timeout_s: int,
            as_json: bool) -> None:
    from pgfleet import context
    from workers.training import runs

    console, _ = _console()
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        run_id = runs.create(conn, task, options)
        if local:
            from workers.tasks.train import JOBS, run_job

            console.print(f"training run {run_id} ({task}) runs here")
            run_job(task, JOBS[task], options, run_id)
        else:
            from workers.app import create_app

            app = create_app(conf)  # broker and result backend: the fleet's Redis
            sent = app.send_task(task, kwargs={"run_id": run_id, **options})
            runs.set_task_id(conn, run_id, sent.id)
            console.print(f"queued training run {run_id} ({task}) on the training queue "
                          f"(task {sent.id})")
            if not wait:
                if as_json:
                    click.echo(json.dumps({"run_id": run_id, "task_id": sent.id,
                                           "status": "queued"}))
                else:
                    console.print(f"follow it with: pgfleet train status {run_id}")
                return
            _follow(conn, run_id, timeout_s)
        row = runs.get(conn, run_id)
        version = _version(conn, row["version_id"]) if row and row["version_id"] else None
    _report(row, version, as_json)


def _follow(conn, run_id: int, timeout_s: float) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from workers.training import runs

    console, _ = _console()
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("run {task.fields[run]}"), TextColumn("{task.description}"),
                  BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task("queued", total=None, run=run_id, loss="-")
        while True:
            row = runs.get(conn, run_id)
            if row is None or row["status"] in FINAL:
                return
            progress.update(bar, description=row["phase"] or row["status"],
                            completed=row["step"], total=row["total_steps"],
                            loss=f"{row['loss']:.4f}" if row["loss"] is not None else "-")
            if time.monotonic() > deadline:
                raise PgfleetError(f"training run {run_id} is still {row['status']} after "
                                   f"{timeout_s} s; it goes on (pgfleet train status {run_id})")
            time.sleep(1.0)


def _version(conn, version_id: int) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT v.id AS version_id, v.name, v.version, v.format, v.artifact, v.metrics, "
            "p.name || '@' || p.version AS parent FROM model_versions v "
            "LEFT JOIN model_versions p ON p.id = v.parent_id WHERE v.id = %s",
            (version_id,)).fetchone()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}


def _report(row: dict[str, Any] | None, version: dict[str, Any] | None, as_json: bool) -> None:
    console, out = _console()
    if row is None:
        raise PgfleetError("the training run disappeared")
    if as_json:
        click.echo(json.dumps({**_jsonable(row), "produced": version}, default=str))
    elif row["status"] == "succeeded" and version is not None:
        out.print(f"training run {row['id']} ({row['task']}) succeeded: registered "
                  f"[bold]{version['name']}@{version['version']}[/bold] (id "
                  f"{version['version_id']}, {version['format']}, inactive) from "
                  f"{version['parent'] or 'scratch'}; artifact {version['artifact']}")
        _print_metrics(row["task"], version["metrics"])
        curve = (row["artifacts"] or {}).get("loss_curve")
        if curve:
            out.print(f"loss curve: {curve}")
    if row["status"] == "failed":
        raise PgfleetError(f"training run {row['id']} ({row['task']}) failed: {row['error']}")
    if row["status"] == "cancelled":
        console.print(f"training run {row['id']} was cancelled")
        sys.exit(1)


def _print_metrics(task: str, m: dict[str, Any]) -> None:
    _, out = _console()
    if task == "quantize":
        _print_quantize(m)
    elif task in ("train_text2sql", "distill_text2sql"):
        from pgfleet.cli.train_text2sql import print_metrics

        print_metrics(m)
    elif task == "train_embeddings":
        held = m["held_out"]
        out.print(f"{m['loss']} on {m['pairs']['train']} pairs ({m['pairs']['source']}), "
                  f"{m['train_seconds']} s; held out: {m['pairs']['held_out']} pairs")
        table = Table(title=f"held-out retrieval ({held['base']['queries']} queries, "
                            f"{held['base']['corpus']} passages)")
        for col in ("model", "MRR@10", "recall@10"):
            table.add_column(col, justify="right")
        table.add_row("base", str(held["base"]["mrr@10"]), str(held["base"]["recall@10"]))
        table.add_row("fine-tuned", str(held["new"]["mrr@10"]), str(held["new"]["recall@10"]))
        out.print(table)
    elif task == "distill_embeddings":
        held, speed = m["held_out"], m["docs_per_s"]
        table = Table(title=f"student ({m['student']}) against its teacher")
        for col in ("", "teacher", "student", "student / teacher"):
            table.add_column(col, justify="right")
        table.add_row("parameters", f"{m['parameters']['teacher']:,}",
                      f"{m['parameters']['student']:,}",
                      str(m["parameters"]["student_to_teacher"]))
        table.add_row("size (MB)", f"{m['bytes']['teacher'] / 1e6:.1f}",
                      f"{m['bytes']['student'] / 1e6:.1f}", str(m["bytes"]["student_to_teacher"]))
        table.add_row("docs/s", str(speed["teacher"]), str(speed["student"]),
                      str(speed["speedup"]))
        table.add_row("held-out MRR@10", str(held["teacher"]["mrr@10"]),
                      str(held["student"]["mrr@10"]), str(held["mrr@10_retained"]))
        out.print(table)
        out.print(f"mean cosine to the teacher on held-out passages: {held['cosine_to_teacher']} "
                  f"(before training: {held['cosine_to_teacher_untrained']})")


def _print_quantize(m: dict[str, Any]) -> None:
    _, out = _console()
    sizes = m["file_bytes"]
    out.print(f"file: fp32 {sizes['onnx_fp32'] / 1e6:.1f} MB -> INT8 "
              f"{sizes['onnx_int8'] / 1e6:.1f} MB ({sizes['int8_to_fp32']:.0%})")
    table = Table(title=f"docs/s on {m['sample']['docs']} docs ({m['sample']['source']})")
    for col in ("engine", "batch 1", "batch 64", "best", "best token budget"):
        table.add_column(col, justify="right")
    for name, row in m["docs_per_s"].items():
        table.add_row(name, str(row["batch1_docs_per_s"]), str(row["batch64_docs_per_s"]),
                      str(row["best_docs_per_s"]), str(row["best_token_budget"]))
    out.print(table)
    f = m["fidelity_int8"]
    out.print(f"INT8 speed-up: {m['speedup']['int8_vs_torch_fp32']}x torch fp32, "
              f"{m['speedup']['int8_vs_onnx_fp32']}x ONNX fp32; fidelity to the source: "
              f"cosine mean {f['cosine_mean']}, min {f['cosine_min']}, top-10 overlap "
              f"{f['top10_overlap']}")


# ------------------------------------------------------------------------------ runs
def progress_bar(step: int, total: int | None, width: int = 12) -> str:
    if not total:
        return "-"
    done = min(max(step / total, 0.0), 1.0)
    filled = int(round(done * width))
    return f"{'█' * filled}{'░' * (width - filled)} {done:4.0%}"


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

    from pgfleet import context
    from workers.training import runs

    _, out = _console()
    with context.connection(autocommit=True) as conn:
        def rows() -> list[dict[str, Any]]:
            if run_id is None:
                return runs.listing(conn, limit)
            row = runs.get(conn, run_id)
            if row is None:
                raise PgfleetError(f"training run {run_id} does not exist")
            return [row]

        if as_json:
            click.echo(json.dumps([_jsonable(r) for r in rows()], default=str))
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
    _, out = _console()
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
    from pgfleet import context
    from workers.training import runs

    _, out = _console()
    with context.connection(autocommit=True) as conn:
        status = runs.cancel(conn, run_id)
    if status == "cancelled":
        out.print(f"training run {run_id} cancelled")
    elif status == "running":
        out.print(f"training run {run_id} will stop within a heartbeat (pgfleet train "
                  f"status {run_id})")
    else:
        out.print(f"training run {run_id} is already {status}; nothing to cancel")
