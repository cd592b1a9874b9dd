"""``train_text2sql``: a T5 trained on (question, SQL) examples, as a training-queue job.

The examples are the connected database's rows of ``text2sql_examples`` (``db_name`` NULL);
when there are none and ``synth_if_empty`` is set, a bootstrap set is synthesized from the
live schema (:mod:`~pgfleet.text2sql.synth`) for this run only: it is not stored (``pgfleet
text2sql synth`` stores one). The model reads ``question | table : col , col | ...`` over the
tables the question names (:mod:`~pgfleet.text2sql.inputs`) and writes the SQL.

The held-out split is a stable hash of the SQL, so that the phrasings of one query are all
on the same side: held-out questions ask for queries the model never saw, in templates it
did. On them it reports exact match (SQL normalized by sqlglot) and execution accuracy
(gold and generated SQL run read-only through the guard, result sets compared with the
defog rules of :mod:`~pgfleet.text2sql.scoring`), for the top beam and for the first beam
that passes the guard, as ``generate_sql`` answers. The model is registered as a new,
inactive ``text2sql`` version (format ``torch``, a ``save_pretrained`` directory).

This module holds the training loop and the job; the examples and pairs are
:mod:`pgfleet.training.text2sql_data`'s, the measuring :mod:`pgfleet.training.text2sql_eval`'s.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import psycopg

from pgfleet.models import versions
from pgfleet.settings import Settings
from pgfleet.training.jobs import register_under_lock, run_artifact_dir
from pgfleet.training.loop import optimizer_step, save_loss_curve
from pgfleet.training.run_handle import Run
from pgfleet.training.specs import TRAIN_TEXT2SQL
from pgfleet.training.text2sql_data import Pair, examples_for, held_out, open_reader
from pgfleet.training.text2sql_eval import evaluate, normalize_sql

__all__ = [
    "BPE_VOCAB", "OPTIONS", "Pair", "distillation_loss", "evaluate", "examples_for", "fit",
    "held_out", "length_batches", "normalize_sql", "open_reader", "register",
    "save_and_register", "set_max_new_tokens", "train_text2sql", "validate_options",
]

logger = logging.getLogger(__name__)

#: the job's options (declared, with their rules, in :mod:`pgfleet.training.specs`)
OPTIONS = TRAIN_TEXT2SQL.options
#: the size of a BPE vocabulary trained on the examples (smaller when they hold fewer pieces)
BPE_VOCAB = 1000


def validate_options(given: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in, or a clear error naming each bad one."""
    return TRAIN_TEXT2SQL.validate(given)


# ----------------------------------------------------------------------------- training
def length_batches(pairs: list[Pair], batch_size: int, rng: random.Random) -> list[list[Pair]]:
    """Batches of similar input length (less padding), in a shuffled order."""
    ordered = sorted(pairs, key=lambda p: len(p.input) + len(p.target) + rng.random() * 16)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches


def distillation_loss(student_logits, teacher_logits, labels, ce, *, alpha: float,
                      temperature: float):
    """α·KL(softmax(teacher/T) ‖ softmax(student/T))·T² + (1−α)·cross-entropy (Hinton et
    al., 2015), the KL averaged over the target tokens (``labels`` != -100)."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    mask = labels != -100
    t = temperature
    log_student = F.log_softmax(student_logits[mask] / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits[mask] / t, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return alpha * kl * t * t + (1 - alpha) * ce


def fit(run: Run, seq, train: list[Pair], options: dict[str, Any], *,
        teacher=None) -> list[float]:
    """AdamW with linear warm-up and decay, gradient clipping at 1.0; progress, loss and
    cancellation through ``run`` at every step. With a ``teacher`` (same tokenizer), the
    loss is :func:`distillation_loss` with ``options``' alpha and temperature."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from pgfleet.text2sql.model import encode

    torch.manual_seed(options["seed"])
    rng = random.Random(options["seed"])
    epochs, batch_size = options["epochs"], options["batch_size"]
    total = math.ceil(len(train) / batch_size) * epochs
    params = [p for p in seq.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options["learning_rate"], weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * options["warmup_ratio"]),
                                                total)
    losses: list[float] = []
    step = 0
    run.progress(0, total, phase="training", force=True)
    seq.model.train()
    try:
        for epoch in range(epochs):
            for batch in length_batches(train, batch_size, rng):
                step += 1
                features = encode(seq, [p.input for p in batch], [p.target for p in batch])
                out = seq.model(**features)
                loss = out.loss
                if teacher is not None:
                    with torch.no_grad():
                        taught = teacher.model(**features).logits
                    loss = distillation_loss(out.logits, taught, features["labels"], loss,
                                             alpha=options["alpha"],
                                             temperature=options["temperature"])
                losses.append(optimizer_step(loss, params, optimizer, scheduler, step))
                run.progress(step, total, loss=losses[-1],
                             phase=f"training, epoch {epoch + 1}/{epochs}")
    finally:
        seq.model.eval()
    return losses


# ----------------------------------------------------------------------------- the job
def _version_label(conn: psycopg.Connection, name: str) -> str:
    """A text2sql version is labelled ``v1``, ``v2``... in the order its model gets them."""
    return versions.numbered_label(versions.taken_labels(conn, name))


def register(conn: psycopg.Connection, *, name: str, version: str, artifact: str,
             max_seq_length: int, metrics: dict[str, Any], parent_id: int | None = None) -> int:
    return versions.insert(conn, kind="text2sql", name=name, version=version, fmt="torch",
                           artifact=artifact, dimensions=None, max_seq_length=max_seq_length,
                           metrics=metrics, parent_id=parent_id)


def _scratch_config(options: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if options["d_model"]:
        config.update(d_model=options["d_model"], d_ff=options["d_model"] * 3,
                      d_kv=options["d_model"] // 4)
    if options["layers"]:
        config.update(num_layers=options["layers"], num_decoder_layers=options["layers"])
    return config



def save_and_register(conn: psycopg.Connection, settings: Settings, run: Run, seq, *,
                      task: str, name: str, losses: list[float], metrics: dict[str, Any],
                      parent_id: int | None = None) -> dict[str, Any]:
    """Save the model under the models directory and register it as a new inactive text2sql
    version of ``name``; the task's result."""
    from pgfleet.text2sql import model as t2s_model

    # the directory is the run's (two runs may end at once); the label is chosen at
    # registration, under the name's lock
    directory = run_artifact_dir(settings, name, run.id).resolve()
    t2s_model.save(seq, directory)
    curve = save_loss_curve(losses, directory / "loss.png", f"{task} run {run.id}")
    metrics = {"task": task, "run_id": run.id, **metrics,
               "final_loss": round(losses[-1], 5) if losses else None}
    version, version_id = register_under_lock(
        conn, name, lambda: _version_label(conn, name),
        lambda label: register(conn, name=name, version=label, artifact=str(directory),
                               max_seq_length=t2s_model.MAX_INPUT_TOKENS, metrics=metrics,
                               parent_id=parent_id))
    held = metrics["held_out"]
    logger.info("%s: text2sql %s@%s, held-out execution accuracy %.3f (guided %.3f)", task,
                name, version, held["execution_accuracy"], held["execution_accuracy_guided"])
    return {"version_id": version_id, "name": name, "version": version, "format": "torch",
            "artifact": str(directory), "metrics": metrics,
            "artifacts": {"loss_curve": curve, "model": str(directory)}}


def set_max_new_tokens(seq, train: list[Pair]) -> None:
    from pgfleet.text2sql.model import MAX_TARGET_TOKENS

    longest = max(len(seq.tokenizer(p.target)["input_ids"]) for p in train)
    seq.model.generation_config.max_new_tokens = min(MAX_TARGET_TOKENS, longest + 32)


def train_text2sql(conn: psycopg.Connection, settings: Settings, run: Run,
                   **options: Any) -> dict[str, Any]:
    """Train (or fine-tune ``base_model``) on the examples, measure on the held-out ones,
    register the model as a new inactive text2sql version. ``options`` are checked
    (:meth:`~pgfleet.training.specs.JobSpec.execute` runs it)."""
    import torch

    from pgfleet.text2sql import model as t2s_model

    torch.set_num_threads(max(1, settings.torch_threads or torch.get_num_threads()))
    if options["base_model"]:  # fail early when it cannot be loaded
        run.phase("loading the model")
        seq = t2s_model.build(options["base_model"])
    with open_reader(settings, conn) as reader:
        train, held, seen, source = examples_for(conn, reader, run, options)
    if not options["base_model"]:
        tokenizer = None
        if options["tokenizer"] == "bpe":  # learned from the training side only
            tokenizer = t2s_model.bpe_tokenizer([p.input for p in train] +
                                                [p.target for p in train], BPE_VOCAB)
        seq = t2s_model.build(config=_scratch_config(options), seed=options["seed"],
                              tokenizer=tokenizer)
    seq.mask_values, seq.link_columns = options["mask_values"], options["link_columns"]
    set_max_new_tokens(seq, train)
    run.check_cancelled()

    started = time.perf_counter()
    losses = fit(run, seq, train, options)
    train_s = time.perf_counter() - started
    run.phase(f"evaluating on {len(held)} held-out examples")
    started = time.perf_counter()
    with open_reader(settings, conn) as reader:
        held_metrics = evaluate(reader, run, seq, held, beams=options["beams"], seen=seen)
    eval_s = time.perf_counter() - started
    return save_and_register(conn, settings, run, seq, task="train_text2sql",
                             name=options["name"], losses=losses, metrics={
        "model": seq.source,
        "tokenizer": (options["tokenizer"] if not options["base_model"] else "base model's"),
        "vocabulary": len(seq.tokenizer),
        "parameters": t2s_model.parameters(seq),
        "examples": {"source": source, "train": len(train), "held_out": len(held),
                     "distinct_readings": len(seen), "split": "stable hash of the SQL"},
        "held_out": held_metrics, "options": options,
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1)})
