"""Fine-tuning and distillation of embedding models, as training-queue jobs.

**train_embeddings** fine-tunes a torch version on pairs (see :mod:`pgfleet.training.pairs`):
with scores, sentence-transformers' ``CosineSimilarityLoss`` (the original design); with
positive pairs only, ``MultipleNegativesRankingLoss`` (every other passage in the batch is
a negative). The held-out pairs (a stable hash split) measure MRR@10 and recall@10 of the
base and the new model: each held-out query against the held-out passages plus up to
``DISTRACTORS`` passages from the training side (measured by
:mod:`pgfleet.training.embeddings_eval`).

**distill_embeddings** builds a student from the teacher by keeping a subset of its
transformer layers (evenly spaced, the first and last included; or a named smaller model),
and trains it to reproduce the teacher's embeddings (MSE) on the table's own texts, the
held-out docs left out. It reports parameters, size on disk, docs/s and the share of the
teacher's MRR@10 the student keeps on the held-out split.

Both register the result as a new, inactive version with its metrics and its parent. The
loop is a plain PyTorch loop over sentence-transformers' losses, so that every step can
report progress, keep the run's heartbeat and stop when the run is cancelled.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

import schema
from pgfleet.embedding.engines.base import ModelSpec
from pgfleet.embedding.engines.registry import resolve_artifact
from pgfleet.errors import PgfleetError
from pgfleet.models.versions import embedding_version
from pgfleet.settings import Settings
from pgfleet.training import pairs as pairs_mod
from pgfleet.training.embeddings_eval import (
    directory_bytes,
    docs_per_s,
    encoder,
    measured_on,
    parameters,
    pick_distractors,
    retrieval_metrics,
)
from pgfleet.training.jobs import register_version, run_artifact_dir
from pgfleet.training.loop import optimizer_step, save_loss_curve
from pgfleet.training.options import Option, check_options
from pgfleet.training.run_handle import Run
from pgfleet.training.specs import DISTILL_EMBEDDINGS, TRAIN_EMBEDDINGS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- options
#: the jobs' options (declared, with their rules, in :mod:`pgfleet.training.specs`)
TRAIN_OPTIONS = TRAIN_EMBEDDINGS.options
DISTILL_OPTIONS = DISTILL_EMBEDDINGS.options


def validate_options(task: str, given: dict[str, Any],
                     options: Mapping[str, Option]) -> dict[str, Any]:
    """The job's options with defaults filled in, or a clear error for each bad one."""
    return check_options(task, given, options)


# ----------------------------------------------------------------------------- training
def _device(settings: Settings) -> str:
    from pgfleet.embedding.engines.torch_engine import pick_device

    return pick_device(settings.device)


def load_model(path: str, device: str, max_seq_length: int = 0):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress goes to the run, not to the worker's log

    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # the library raises many kinds for a bad path
        raise PgfleetError(f"cannot load the model at {path!r}: {exc}") from exc
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _to_device(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in features.items()}


def fit(run: Run, model, loss_fn, examples: list[Any],
        make_batch: Callable[[list[Any]], tuple[list[dict[str, Any]], Any]], *, epochs: int,
        batch_size: int, learning_rate: float, warmup_ratio: float, seed: int,
        phase: str, min_batch: int = 1) -> list[float]:
    """A plain training loop: AdamW, linear warm-up and decay, gradient clipping at 1.0;
    progress (step, total, loss) and cancellation through ``run`` at every step."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = steps_per_epoch * epochs
    params = [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * warmup_ratio), total)
    losses: list[float] = []
    step = 0
    run.progress(0, total, phase=phase, force=True)
    model.train()
    try:
        for epoch in range(epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = [examples[i] for i in order[start:start + batch_size]]
                step += 1
                if len(batch) < min_batch:
                    continue
                features, labels = make_batch(batch)
                loss = loss_fn(features, labels)
                losses.append(optimizer_step(loss, params, optimizer, scheduler, step))
                run.progress(step, total, loss=losses[-1],
                             phase=f"{phase}, epoch {epoch + 1}/{epochs}")
    finally:
        model.eval()
    run.progress(step, total, phase=phase, force=True)
    return losses



def _torch_version(conn: psycopg.Connection, ref: str, verb: str) -> ModelSpec:
    spec = embedding_version(conn, ref)
    if spec.format != "torch":
        raise PgfleetError(f"model version {spec.label} is {spec.format}; {verb} a torch version")
    return spec


def train_embeddings(conn: psycopg.Connection, settings: Settings, run: Run,
                     **options: Any) -> dict[str, Any]:
    """Fine-tune a torch version on pairs; register the result (inactive). ``options`` are
    checked (:meth:`~pgfleet.training.specs.JobSpec.execute` runs it)."""
    import torch
    from sentence_transformers.sentence_transformer import losses

    source = _torch_version(conn, options["from_version"], "fine-tune")
    pairs, pairs_source = pairs_mod.load_pairs(conn, source=options["pairs"],
                                               limit=options["max_pairs"] or None)
    train, held = pairs_mod.split(pairs, options["eval_fraction"])
    scored = all(p.score is not None for p in train)
    if not scored and any(p.score is not None for p in train):
        raise PgfleetError("the pairs mix scored and unscored rows: give every pair a score "
                           "(cosine-similarity loss) or none (in-batch negatives)")
    device = _device(settings)
    path = resolve_artifact(source.artifact)
    model = load_model(path, device, options["max_seq_length"])
    distractors = pick_distractors(train, held)
    run.phase("measuring the base model")
    base_metrics = retrieval_metrics(encoder(model), held, distractors)
    run.check_cancelled()

    loss_fn: torch.nn.Module
    if scored:
        loss_fn = losses.CosineSimilarityLoss(model)
        loss_name = "CosineSimilarityLoss"
    else:
        loss_fn = losses.MultipleNegativesRankingLoss(model)
        loss_name = "MultipleNegativesRankingLoss"

    def make_batch(batch: list[pairs_mod.Pair]):
        a = _to_device(model.preprocess([p.text_a for p in batch]), device)
        b = _to_device(model.preprocess([p.text_b for p in batch]), device)
        labels = (torch.tensor([p.score for p in batch], dtype=torch.float32, device=device)
                  if scored else None)
        return [a, b], labels

    started = time.perf_counter()
    loss_history = fit(run, model, loss_fn, train, make_batch, epochs=options["epochs"],
                       batch_size=options["batch_size"], learning_rate=options["learning_rate"],
                       warmup_ratio=options["warmup_ratio"], seed=options["seed"],
                       phase="fine-tuning", min_batch=1 if scored else 2)
    train_s = time.perf_counter() - started
    run.phase("measuring the new model")
    new_metrics = retrieval_metrics(encoder(model), held, distractors)

    directory = run_artifact_dir(settings, source.name, run.id)
    model.save(str(directory))
    curve = save_loss_curve(loss_history, directory / "loss.png",
                            f"train_embeddings run {run.id}: {loss_name}")
    metrics = {
        "task": "train_embeddings", "run_id": run.id, "loss": loss_name,
        "pairs": {"source": pairs_source, "train": len(train), "held_out": len(held),
                  "scored": scored},
        "held_out": {"base": base_metrics, "new": new_metrics,
                     "mrr@10_gain": round(new_metrics["mrr@10"] - base_metrics["mrr@10"], 4)},
        "options": options, "train_seconds": round(train_s, 1),
        "final_loss": round(loss_history[-1], 5) if loss_history else None,
        "device": device, "measured_on": measured_on(),
    }
    registered = register_version(conn, source, base=f"{source.version}-ft", fmt="torch",
                                  artifact=str(directory), metrics=metrics)
    logger.info("fine-tuned %s into %s@%s: held-out MRR@10 %.4f -> %.4f", source.label,
                source.name, registered["version"], base_metrics["mrr@10"],
                new_metrics["mrr@10"])
    return {**registered, "artifacts": {"loss_curve": curve, "model": str(directory)}}



def keep_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layer indices, evenly spaced, first and last included."""
    if not 1 <= keep <= total:
        raise PgfleetError(f"layers must be between 1 and the teacher's {total}, not {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def build_student(teacher_path: str, device: str, keep: int, max_seq_length: int = 0):
    """A copy of the teacher keeping ``keep`` of its transformer layers."""
    import torch

    student = load_model(teacher_path, device, max_seq_length)
    auto = student[0].auto_model
    encoder_stack = getattr(auto, "encoder", None)
    layers = getattr(encoder_stack, "layer", None)
    if encoder_stack is None or layers is None:
        raise PgfleetError("distilling by layers needs a BERT-like teacher (encoder.layer); "
                           "name a smaller student model instead")
    kept = keep_layers(len(layers), keep)
    encoder_stack.layer = torch.nn.ModuleList([layers[i] for i in kept])
    auto.config.num_hidden_layers = len(kept)
    return student, kept


def distill_embeddings(conn: psycopg.Connection, settings: Settings, run: Run,
                       **options: Any) -> dict[str, Any]:
    """Distill a torch version (the teacher) into a smaller student; register the student.
    ``options`` are checked (:meth:`~pgfleet.training.specs.JobSpec.execute` runs it)."""
    import torch
    from sentence_transformers.sentence_transformer import losses

    teacher_spec = _torch_version(conn, options["from_version"], "distill")
    device = _device(settings)
    teacher_path = resolve_artifact(teacher_spec.artifact)
    teacher = load_model(teacher_path, device, options["max_seq_length"])
    if options["student"]:
        student = load_model(options["student"], device, options["max_seq_length"])
        kept: list[int] | None = None
        student_dims = int(student.get_embedding_dimension())
        if student_dims != teacher_spec.dimensions:
            raise PgfleetError(f"the student produces {student_dims}-dimensional vectors and "
                               f"the teacher {teacher_spec.dimensions}: the student must match")
    else:
        total = len(teacher[0].auto_model.encoder.layer)
        student, kept = build_student(teacher_path, device, options["layers"] or total // 2,
                                      options["max_seq_length"])

    pairs, pairs_source = pairs_mod.load_pairs(conn, source="auto")
    train_pairs, held = pairs_mod.split(pairs, options["eval_fraction"])
    texts = _distill_texts(conn, options["max_texts"], held, train_pairs)
    run.phase(f"encoding {len(texts)} texts with the teacher")
    targets = encoder(teacher)(texts)
    held_passages = sorted({p.text_b for p in held})[:500]
    teacher_held = encoder(teacher)(held_passages)
    cos_before = float(np.mean(np.sum(teacher_held * encoder(student)(held_passages), axis=1)))
    run.check_cancelled()
    loss_fn = losses.MSELoss(student)
    examples = list(range(len(texts)))

    def make_batch(batch: list[int]):
        features = _to_device(student.preprocess([texts[i] for i in batch]), device)
        return [features], torch.tensor(targets[batch], device=device)

    started = time.perf_counter()
    loss_history = fit(run, student, loss_fn, examples, make_batch, epochs=options["epochs"],
                       batch_size=options["batch_size"], learning_rate=options["learning_rate"],
                       warmup_ratio=options["warmup_ratio"], seed=options["seed"],
                       phase="distilling")
    train_s = time.perf_counter() - started

    run.phase("measuring teacher and student")
    distractors = pick_distractors(train_pairs, held)
    teacher_metrics = retrieval_metrics(encoder(teacher), held, distractors)
    student_metrics = retrieval_metrics(encoder(student), held, distractors)
    speed_texts = sorted({p.text_b for p in held})[:500]
    teacher_speed, student_speed = docs_per_s(teacher, speed_texts), docs_per_s(student, speed_texts)
    cos = float(np.mean(np.sum(teacher_held * encoder(student)(held_passages), axis=1)))

    suffix = f"distill{len(kept)}l" if kept is not None else "distill"
    directory = run_artifact_dir(settings, teacher_spec.name, run.id)
    student.save(str(directory))
    curve = save_loss_curve(loss_history, directory / "loss.png",
                            f"distill_embeddings run {run.id}: MSE to the teacher")
    teacher_bytes = directory_bytes(Path(teacher_path))
    student_bytes = directory_bytes(directory) - (directory / "loss.png").stat().st_size \
        if curve else directory_bytes(directory)
    metrics: dict[str, Any] = {
        "task": "distill_embeddings", "run_id": run.id, "loss": "MSELoss",
        "student": options["student"] or f"teacher layers {kept}",
        "texts": len(texts), "pairs": {"source": pairs_source, "held_out": len(held)},
        "parameters": {"teacher": parameters(teacher), "student": parameters(student),
                       "student_to_teacher": round(parameters(student) / parameters(teacher), 3)},
        "bytes": {"teacher": teacher_bytes, "student": student_bytes,
                  "student_to_teacher": round(student_bytes / teacher_bytes, 3)},
        "docs_per_s": {"teacher": teacher_speed, "student": student_speed,
                       "speedup": round(student_speed / teacher_speed, 3)},
        "held_out": {"teacher": teacher_metrics, "student": student_metrics,
                     "mrr@10_retained": round(student_metrics["mrr@10"]
                                              / max(teacher_metrics["mrr@10"], 1e-9), 4),
                     "cosine_to_teacher": round(cos, 4),
                     "cosine_to_teacher_untrained": round(cos_before, 4)},
        "options": options, "train_seconds": round(train_s, 1),
        "final_loss": round(loss_history[-1], 6) if loss_history else None,
        "device": device, "measured_on": measured_on(),
    }
    registered = register_version(conn, teacher_spec,
                                  base=f"{teacher_spec.version}-{suffix}", fmt="torch",
                                  artifact=str(directory), metrics=metrics)
    logger.info("distilled %s into %s@%s: %s of the parameters, %sx the speed, %s of MRR@10",
                teacher_spec.label, teacher_spec.name, registered["version"],
                metrics["parameters"]["student_to_teacher"], metrics["docs_per_s"]["speedup"],
                metrics["held_out"]["mrr@10_retained"])
    return {**registered, "artifacts": {"loss_curve": curve, "model": str(directory)}}


def _distill_texts(conn: psycopg.Connection, limit: int, held: list[pairs_mod.Pair],
                   train_pairs: list[pairs_mod.Pair]) -> list[str]:
    """The table's docs (a fixed sample; the docs and texts of held-out pairs left out) and
    the training queries, so that the student learns short queries as well as passages."""
    held_docs = [p.doc_id for p in held if p.doc_id is not None]
    held_texts = {p.text_a for p in held} | {p.text_b for p in held}
    rows = conn.execute(schema.query("training_distill_docs"), (held_docs, limit)).fetchall()
    docs = [r[0] for r in rows if r[0] not in held_texts]
    queries = [p.text_a for p in train_pairs if p.text_a not in held_texts]
    texts = list(dict.fromkeys(docs + queries[:max(limit // 2, 1)]))
    if len(texts) < 10:
        raise PgfleetError(f"only {len(texts)} texts to distill on: load docs first")
    return texts
