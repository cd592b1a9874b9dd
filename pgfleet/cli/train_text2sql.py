"""``pgfleet train text2sql`` and ``pgfleet train distill-text2sql``: train a text-to-SQL
model, or distill one into a smaller one, on the training queue."""

from __future__ import annotations

import click

from pgfleet.cli.jobs import job_options, submit


@click.command("text2sql")
@click.option("--base-model", default="", help="a seq2seq model to fine-tune: a local "
              "directory or a hub id (t5-small, google/flan-t5-base); default: a small T5 "
              "built from scratch with a byte-level tokenizer")
@click.option("--tokenizer", type=click.Choice(["bpe", "bytes"]), default=None,
              help="for a model from scratch: a BPE vocabulary learned from the training "
                   "examples (default; sequences ~4x shorter) or raw bytes (ByT5)")
@click.option("--d-model", type=click.IntRange(min=0), default=0,
              help="width of a model from scratch (0: 128)")
@click.option("--layers", type=click.IntRange(min=0), default=0,
              help="encoder and decoder layers of a model from scratch (0: 3 each)")
@click.option("--name", default="text2sql", show_default=True, help="the model's name")
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True,
              help="1e-3 suits a model from scratch; use ~3e-4 to fine-tune a pretrained one")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--eval-fraction", type=float, default=0.2, show_default=True,
              help="share of the distinct SQL queries held out (a stable hash of the SQL)")
@click.option("--max-examples", type=click.IntRange(min=0), default=0, help="0: all")
@click.option("--max-eval", type=click.IntRange(min=1), default=200, show_default=True,
              help="held-out examples to measure on at most")
@click.option("--beams", type=click.IntRange(min=1, max=16), default=4, show_default=True,
              help="beam width of the held-out measurement")
@click.option("--synth-if-empty/--no-synth-if-empty", default=True, show_default=True,
              help="with no stored examples, synthesize a set from the live schema for this "
                   "run (not stored; `pgfleet text2sql synth` stores one)")
@click.option("--mask-values/--no-mask-values", default=True, show_default=True,
              help="take values (the database's, quoted text, dates, numbers) out of the "
                   "question and put them back into the SQL, instead of the model copying "
                   "them")
@click.option("--max-copies", type=click.IntRange(min=1), default=4, show_default=True,
              help="examples that read the same once values are masked: train on at most "
                   "this many of each")
@click.option("--link-columns/--no-link-columns", default=True, show_default=True,
              help="list the columns the question names apart from the schema (schema "
                   "linking)")
@job_options
def train_text2sql(base_model: str, tokenizer: str | None, d_model: int, layers: int,
                   name: str, epochs: int, batch_size: int, learning_rate: float, seed: int,
                   eval_fraction: float, max_examples: int, max_eval: int, beams: int,
                   synth_if_empty: bool, mask_values: bool, max_copies: int,
                   link_columns: bool, local: bool, wait: bool,
                   timeout_s: int, as_json: bool) -> None:
    """Train a text-to-SQL T5 on text2sql_examples; register it (inactive) with exact match
    and execution accuracy on held-out examples."""
    options = {"base_model": base_model, "name": name, "epochs": epochs,
               "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
               "eval_fraction": eval_fraction, "max_examples": max_examples,
               "max_eval": max_eval, "beams": beams, "synth_if_empty": synth_if_empty,
               "mask_values": mask_values, "max_copies": max_copies,
               "link_columns": link_columns}
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    if d_model:
        options["d_model"] = d_model
    if layers:
        options["layers"] = layers
    submit("train_text2sql", options, local=local, wait=wait, timeout_s=timeout_s,
           as_json=as_json)


@click.command("distill-text2sql")
@click.option("--from", "from_version", required=True,
              help="the teacher: a text2sql version (id, v2 or name@v2)")
@click.option("--name", default="", help="the student's name (default: the teacher's)")
@click.option("--d-model", type=click.IntRange(min=0), default=0,
              help="the student's width (0: half the teacher's)")
@click.option("--layers", type=click.IntRange(min=0), default=0,
              help="the student's encoder and decoder layers (0: half the teacher's)")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="weight of the KL term (1 - alpha: cross-entropy on the gold SQL)")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0,
              show_default=True, help="softens both distributions in the KL term")
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--max-eval", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--beams", type=click.IntRange(min=1, max=16), default=4, show_default=True)
@job_options
def distill_text2sql(from_version: str, name: str, d_model: int, layers: int, alpha: float,
                     temperature: float, epochs: int, batch_size: int, learning_rate: float,
                     seed: int, max_eval: int, beams: int, local: bool, wait: bool,
                     timeout_s: int, as_json: bool) -> None:
    """Distill a text2sql version into a smaller student (α·KL·T² + (1−α)·CE); register it
    (inactive) with both models' held-out accuracy, sizes and speeds."""
    options = {"from_version": from_version, "name": name, "d_model": d_model,
               "layers": layers, "alpha": alpha, "temperature": temperature,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "seed": seed, "max_eval": max_eval, "beams": beams}
    submit("distill_text2sql", options, local=local, wait=wait, timeout_s=timeout_s,
           as_json=as_json)
