"""``pgfleet train text2sql`` and ``pgfleet train distill-text2sql``: train a text-to-SQL
model, or distill one into a smaller one, on the training queue."""

from __future__ import annotations

from typing import Any

import click

from pgfleet.cli.jobs import job_options, spec_options, submit
from pgfleet.training.specs import DISTILL_TEXT2SQL, TRAIN_TEXT2SQL


@click.command("text2sql")
@spec_options(TRAIN_TEXT2SQL)
@job_options
def train_text2sql(local: bool, wait: bool, timeout_s: int, as_json: bool,
                   **options: Any) -> None:
    """Train a text-to-SQL T5 on text2sql_examples; register it (inactive) with exact match
    and execution accuracy on held-out examples."""
    submit(TRAIN_TEXT2SQL, options, local=local, wait=wait, timeout_s=timeout_s,
           as_json=as_json)


@click.command("distill-text2sql")
@spec_options(DISTILL_TEXT2SQL)
@job_options
def distill_text2sql(local: bool, wait: bool, timeout_s: int, as_json: bool,
                     **options: Any) -> None:
    """Distill a text2sql version into a smaller student (α·KL·T² + (1−α)·CE); register it
    (inactive) with both models' held-out accuracy, sizes and speeds."""
    submit(DISTILL_TEXT2SQL, options, local=local, wait=wait, timeout_s=timeout_s,
           as_json=as_json)
