"""``pgfleet load``: text, markdown or JSONL files into docs, with every skipped row said."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pgfleet.cli.output import console, out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", default=500, show_default=True)
def load(paths: tuple[Path, ...], batch_size: int) -> None:
    """Load text, markdown or JSONL files (or folders of them) into docs."""
    from rich.progress import Progress

    from pgfleet.cli import context
    from pgfleet.embedding import loader

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
