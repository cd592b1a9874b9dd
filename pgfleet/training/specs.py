"""The training jobs, each defined once: its name, its typed options and what runs it.

Everything else is derived from :data:`SPECS`: the Celery tasks and their routing to the
training queue (:mod:`workers.tasks.train`, :data:`workers.queues.TRAINING_TASKS`), the
``pgfleet train COMMAND`` commands with their help and options (:mod:`pgfleet.cli.jobs`),
``--local`` runs, and the check of the options (:meth:`JobSpec.validate`). A job's function is named, not imported: importing
this module loads no model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from pgfleet.training.options import ALWAYS_SENT, Option, Rule, check_options


@dataclass(frozen=True)
class JobSpec:
    """A training job."""

    #: the Celery task's name and the runs' ``task``
    name: str
    #: what it does (the Celery task's description)
    summary: str
    #: name -> option, in the order the command lists them
    options: Mapping[str, Option]
    #: ``module:function``, called as ``function(conn, settings, run, **options)`` with the
    #: checked options
    run: str
    #: rules across options, checked after each option's own
    rules: tuple[Rule, ...] = ()
    #: its command, ``pgfleet train COMMAND``, and the command's help
    command: str = ""
    help: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def validate(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options with defaults filled in, or a clear error naming the first bad one."""
        return check_options(self.name, given, self.options, self.rules)

    def function(self):
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def execute(self, conn, settings, run, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``given`` and run the job (under its run: a bad option fails the run)."""
        return self.function()(conn, settings, run, **self.validate(given))

    def command_options(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """What the command sends for the values it parsed: not those left unset."""
        return {name: value for name, value in values.items()
                if self.options[name].cli_unset is ALWAYS_SENT
                or value != self.options[name].cli_unset}


# ----------------------------------------------------------------------------- shared
def _epochs(default: int) -> Option:
    return Option(int, default, min=1, show_default=True)


def _batch_size(default: int, least: int = 1, why: str = "") -> Option:
    return Option(int, default, min=least, why=why, show_default=True)


def _unit_open(default: float, help: str | None = None) -> Option:  # noqa: A002
    """A float strictly between 0 and 1 (a learning rate, a held-out share): checked after
    parsing, its range not shown by the command."""
    return Option(float, default, help, min=0, max=1, min_open=True, max_open=True,
                  show_default=True, cli_range=False)


def _warmup(default: float) -> Option:
    return Option(float, default, min=0, max=1, max_open=True, cli=False)


_SEED = Option(int, 42, show_default=True)


# ----------------------------------------------------------------------------- embeddings
QUANTIZE = JobSpec(
    "quantize",
    "Export a torch embedding version to ONNX, quantize it to INT8 and register the result "
    "(``celery -A workers call quantize --kwargs '{\"from_version\": \"v1\"}'``).",
    {"from_version": Option(str, "v1", "the torch version to quantize: id, v1 or name@v1",
                            accepts_id=True, flag="--from", show_default=True),
     "sample": Option(int, 200, "docs to measure on", min=20, show_default=True,
                      cli_range=False)},
    command="quantize",
    help="Export a version to ONNX, quantize it to INT8, measure and register it.",
    run="pgfleet.training.jobs:quantize_job")

TRAIN_EMBEDDINGS = JobSpec(
    "train_embeddings",
    "Fine-tune an embedding version on pairs and register the result (inactive).",
    {"from_version": Option(str, "v1", "the torch version to fine-tune: id, v1 or name@v1",
                            accepts_id=True, flag="--from", show_default=True),
     "pairs": Option(str, "auto", "training_pairs, pairs mined from docs, or the table when "
                     "it holds pairs and else mined", choices=("auto", "table", "mined"),
                     show_default=True),
     "epochs": _epochs(1),
     "batch_size": _batch_size(16, 2, "in-batch negatives"),
     "learning_rate": _unit_open(2e-5),
     "warmup_ratio": _warmup(0.1),
     "seed": _SEED,
     "eval_fraction": _unit_open(0.1, "pairs held out for the before/after metric"),
     "max_pairs": Option(int, 0, "0: all", min=0),
     "max_seq_length": Option(int, 0, "tokens per text while training (0: the model's)",
                              min=0)},
    command="embeddings",
    help=("Fine-tune an embedding version on pairs; register the result (inactive) with MRR@10\n"
          "and recall@10 of the base and the new model on held-out pairs."),
    run="pgfleet.training.embeddings:train_embeddings")

DISTILL_EMBEDDINGS = JobSpec(
    "distill_embeddings",
    "Distill an embedding version into a smaller student and register it (inactive).",
    {"from_version": Option(str, "v1", "the teacher: a torch version", accepts_id=True,
                            flag="--from", show_default=True),
     "layers": Option(int, 0, "transformer layers the student keeps (0: half the teacher's)",
                      min=0),
     "student": Option(str, "", "a smaller model (path or hub id) instead of keeping layers"),
     "epochs": _epochs(3),
     "batch_size": _batch_size(32),
     "learning_rate": _unit_open(2e-4),
     "warmup_ratio": _warmup(0.1),
     "seed": _SEED,
     "max_texts": Option(int, 5000, "docs to distill on", min=10, show_default=True),
     "eval_fraction": _unit_open(0.1),
     "max_seq_length": Option(int, 0, min=0)},
    command="distill",
    help=("Distill a version (the teacher) into a smaller student; register the student with its\n"
          "parameters, size, docs/s and the share of the teacher's MRR@10 it keeps."),
    run="pgfleet.training.embeddings:distill_embeddings")


# ----------------------------------------------------------------------------- text2sql
def _scratch_only(options: dict[str, Any], given: Mapping[str, Any]) -> str | None:
    if options["base_model"] and (options["d_model"] or options["layers"]):
        return "d_model and layers size a model built from scratch; they cannot change base_model"
    if options["base_model"] and "tokenizer" in given:
        return "tokenizer applies to a model built from scratch; base_model brings its own"
    return None


_T2S: dict[str, Option] = {
    "base_model": Option(str, "", "a seq2seq model to fine-tune: a local directory or a hub "
                         "id (t5-small, google/flan-t5-base); default: a small T5 built from "
                         "scratch with a byte-level tokenizer"),
    "tokenizer": Option(str, "bpe", "for a model from scratch: a BPE vocabulary learned from "
                        "the training examples (default; sequences ~4x shorter) or raw bytes "
                        "(ByT5)", choices=("bpe", "bytes"), cli_unset=None),
    "d_model": Option(int, 0, "width of a model from scratch (0: 128)", min=0, multiple_of=8,
                      cli_unset=0),
    "layers": Option(int, 0, "encoder and decoder layers of a model from scratch (0: 3 each)",
                     min=0, cli_unset=0),
    "name": Option(str, "text2sql", "the model's name", nonblank=True, show_default=True),
    "epochs": _epochs(40),
    "batch_size": _batch_size(16),
    "learning_rate": _unit_open(1e-3, "1e-3 suits a model from scratch; use ~3e-4 to "
                                      "fine-tune a pretrained one"),
    "warmup_ratio": _warmup(0.05),
    "seed": _SEED,
    "eval_fraction": _unit_open(0.2, "share of the distinct SQL queries held out (a stable "
                                     "hash of the SQL)"),
    "max_examples": Option(int, 0, "0: all", min=0),
    "max_eval": Option(int, 200, "held-out examples to measure on at most", min=1,
                       show_default=True),
    "beams": Option(int, 4, "beam width of the held-out measurement", min=1, max=16,
                    show_default=True),
    "synth_if_empty": Option(bool, True, "with no stored examples, synthesize a set from the "
                             "live schema for this run (not stored; `pgfleet text2sql synth` "
                             "stores one)", show_default=True),
    "synth_per_template": Option(int, 200, min=1, cli=False),
    "synth_phrasings": Option(int, 4, min=1, cli=False),
    "synth_rounds": Option(int, 4, min=1, cli=False),
    "mask_values": Option(bool, True, "take values (the database's, quoted text, dates, "
                          "numbers) out of the question and put them back into the SQL, "
                          "instead of the model copying them", show_default=True),
    "max_copies": Option(int, 4, "examples that read the same once values are masked: train "
                         "on at most this many of each", min=1, show_default=True),
    "link_columns": Option(bool, True, "list the columns the question names apart from the "
                           "schema (schema linking)", show_default=True),
}

TRAIN_TEXT2SQL = JobSpec(
    "train_text2sql",
    "Train a text-to-SQL T5 on the examples and register it (inactive) "
    "(``celery -A workers call train_text2sql --kwargs '{\"epochs\": 30}'``).",
    _T2S,
    command="text2sql",
    help=("Train a text-to-SQL T5 on text2sql_examples; register it (inactive) with exact match\n"
          "and execution accuracy on held-out examples."),
    run="pgfleet.training.text2sql:train_text2sql", rules=(_scratch_only,))


def _hidden(name: str) -> Option:
    return replace(_T2S[name], cli=False)


def _plain(name: str) -> Option:
    return replace(_T2S[name], help=None)


DISTILL_TEXT2SQL = JobSpec(
    "distill_text2sql",
    "Distill a text2sql version into a smaller student (KL to the teacher's softened "
    "distribution plus cross-entropy) and register it (inactive) "
    "(``celery -A workers call distill_text2sql --kwargs '{\"from_version\": \"v1\"}'``).",
    {"from_version": Option(str, "", "the teacher: a text2sql version (id, v2 or name@v2)",
                            required=True, flag="--from",
                            why="the text2sql version to distill (id, v2 or name@v2)"),
     "name": Option(str, "", "the student's name (default: the teacher's)"),
     "d_model": Option(int, 0, "the student's width (0: half the teacher's)", min=0,
                       multiple_of=8),
     "layers": Option(int, 0, "the student's encoder and decoder layers (0: half the "
                      "teacher's)", min=0),
     "alpha": Option(float, 0.5, "weight of the KL term (1 - alpha: cross-entropy on the gold "
                     "SQL)", min=0, max=1, show_default=True),
     "temperature": Option(float, 2.0, "softens both distributions in the KL term", min=0,
                           min_open=True, show_default=True),
     "epochs": _T2S["epochs"], "batch_size": _T2S["batch_size"],
     "learning_rate": _plain("learning_rate"), "warmup_ratio": _T2S["warmup_ratio"],
     "seed": _SEED, "eval_fraction": _hidden("eval_fraction"),
     "max_examples": _hidden("max_examples"), "max_eval": _plain("max_eval"),
     "beams": _plain("beams"),
     **{name: _hidden(name) for name in ("synth_if_empty", "synth_per_template",
                                         "synth_phrasings", "synth_rounds", "max_copies")}},
    command="distill-text2sql",
    help=("Distill a text2sql version into a smaller student (α·KL·T² + (1−α)·CE); register it\n"
          "(inactive) with both models' held-out accuracy, sizes and speeds."),
    run="pgfleet.training.text2sql_distill:distill_text2sql")


#: task name -> job, in the order the training queue lists them
SPECS: dict[str, JobSpec] = {spec.name: spec for spec in (
    QUANTIZE, TRAIN_EMBEDDINGS, DISTILL_EMBEDDINGS, TRAIN_TEXT2SQL, DISTILL_TEXT2SQL)}

