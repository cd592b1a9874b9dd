"""How the ``pgfleet train`` commands run a training job: its options (made from the job's
spec, and those every job shares), queueing the job on the training queue (or running it
here), following its run, and printing what it produced: the registered version and its
metrics, per job."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

import click
from rich.table import Table

from pgfleet.cli.output import console, out
from pgfleet.errors import PgfleetError
from pgfleet.training.options import ALWAYS_SENT, Option
from pgfleet.training.specs import JobSpec

FINAL = ("succeeded", "failed", "cancelled")


def job_command(spec: JobSpec) -> click.Command:
    """``pgfleet train COMMAND`` for a job, made from its spec: its name and help, the job's
    own options, then those every job shares."""
    def run(local: bool, wait: bool, timeout_s: int, as_json: bool, **options: Any) -> None:
        submit(spec, options, local=local, wait=wait, timeout_s=timeout_s, as_json=as_json)

    return click.command(spec.command, help=spec.help)(spec_options(spec)(job_options(run)))


def job_options(func):
    """The options every training job takes: --local, --wait/--no-wait, --timeout, --json."""
    func = click.option("--json", "as_json", is_flag=True)(func)
    func = click.option("--timeout", "timeout_s", default=24 * 3600, show_default=True,
                        help="seconds to wait for the run")(func)
    func = click.option("--wait/--no-wait", default=True, show_default=True,
                        help="follow the run until it ends (Ctrl-C stops following, not "
                             "the run)")(func)
    func = click.option("--local", is_flag=True,
                        help="run in this process instead of on the training queue")(func)
    return func


def spec_options(spec: JobSpec):
    """The command's options for the job's own options, made from its spec: each with its
    flag, type, default and help, its range in the type where the help shows it, and the
    spec's rule checked on the parsed value."""
    def decorate(func):
        for name, option in reversed(list(spec.options.items())):
            if option.cli:
                func = _click_option(name, option)(func)
        return func
    return decorate


def _click_option(name: str, option: Option):
    flag = option.flag or "--" + name.replace("_", "-")
    if option.type is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    kwargs: dict[str, Any] = {"type": _click_type(option), "help": option.help,
                              "show_default": option.show_default or None,
                              "callback": _check(name, option)}
    if option.required:
        kwargs["required"] = True
    else:
        kwargs["default"] = (option.default if option.cli_unset is ALWAYS_SENT
                             else option.cli_unset)
    return click.option(flag, name, **kwargs)


def _click_type(option: Option):
    if option.choices:
        return click.Choice(list(option.choices))
    bounds = option.cli_range and (option.min is not None or option.max is not None)
    if bounds and option.type is int:
        return click.IntRange(option.min, option.max)
    if bounds and option.type is float:
        return click.FloatRange(option.min, option.max, min_open=option.min_open,
                                max_open=option.max_open)
    return None if option.type is bool else option.type


def _check(name: str, option: Option):
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        problem = option.problem(name, value) if value is not None else None
        if problem:
            raise click.BadParameter(problem, ctx, param)
        return value
    return check


def submit(spec: JobSpec, values: dict[str, Any], *, local: bool, wait: bool, timeout_s: int,
           as_json: bool) -> None:
    """Create a run of the job with the options the command parsed (``values``), queue it
    (or run it here with ``local``), follow it when asked to, and print what it produced."""
    from pgfleet.cli import context
    from pgfleet.training import runs

    task, options = spec.name, spec.command_options(values)
    conf = context.settings()
    with context.connection(conf, autocommit=True) as conn:
        run_id = runs.create(conn, task, options)
        if local:
            from workers.tasks.train import run_job

            console.print(f"training run {run_id} ({task}) runs here")
            run_job(spec, options, run_id)
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

    from pgfleet.training import runs

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
    from pgfleet import db

    return db.fetch_one(conn, "produced_version", (version_id,))


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A training run's row for JSON output: its times in ISO 8601."""
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}


def _report(row: dict[str, Any] | None, version: dict[str, Any] | None, as_json: bool) -> None:
    if row is None:
        raise PgfleetError("the training run disappeared")
    if as_json:
        click.echo(json.dumps({**jsonable(row), "produced": version}, default=str))
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
    if task == "quantize":
        _print_quantize(m)
    elif task in ("train_text2sql", "distill_text2sql"):
        _print_text2sql(m)
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


def _print_text2sql(m: dict[str, Any]) -> None:
    held, examples = m["held_out"], m["examples"]
    out.print(f"{m['model']} ({m['parameters']:,} parameters) on {examples['train']} examples "
              f"({examples['source']}), {m['train_seconds']} s")
    table = Table(title=f"held out: {held['examples']} examples, {held['beams']} beams")
    for col in ("exact match", "execution accuracy", "execution accuracy (guided)"):
        table.add_column(col, justify="right")
    table.add_row(str(held["exact_match"]), str(held["execution_accuracy"]),
                  str(held["execution_accuracy_guided"]))
    if "compared" in m:
        c, teacher = m["compared"], m["teacher_held_out"]
        out.print(f"teacher {m['teacher']}: execution accuracy (guided) "
                  f"{teacher['execution_accuracy_guided']}; the student keeps "
                  f"{c['accuracy_kept']} of it with {c['parameters_ratio']} of the parameters, "
                  f"{c['speedup']}x as fast ({c['questions_per_s']['student']} vs "
                  f"{c['questions_per_s']['teacher']} questions/s)")
    out.print(table)
    unseen = held.get("unseen_readings") or {}
    if unseen.get("examples"):
        out.print(f"of which {unseen['examples']} read differently from every training "
                  f"example even with values masked: execution accuracy (guided) "
                  f"{unseen['execution_accuracy_guided']}")
