"""``distill_text2sql``: a smaller text-to-SQL student taught by a trained text2sql version.

The student is a T5 built from config, narrower and shallower than the teacher (half its
width and layers by default), reading with the teacher's tokenizer (the KL term compares
their distributions over the same vocabulary) and the teacher's input rule (values masked or
not). It learns on the teacher's kind of examples (:func:`~pgfleet.training.text2sql_data.
examples_for`, the same split) with the loss of the original design:

    α·KL(softmax(teacher/T) ‖ softmax(student/T))·T² + (1−α)·cross-entropy

Both are measured on the same held-out examples, and their generation speed back to back on
the held-out inputs. The student is registered as a new inactive text2sql version whose
parent is the teacher.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgfleet.settings import Settings
from pgfleet.training.run_handle import Run
from pgfleet.training.specs import DISTILL_TEXT2SQL
from pgfleet.training.text2sql import fit, save_and_register, set_max_new_tokens
from pgfleet.training.text2sql_data import examples_for, open_reader
from pgfleet.training.text2sql_eval import evaluate

#: the job's options (declared, with their rules, in :mod:`pgfleet.training.specs`)
OPTIONS = DISTILL_TEXT2SQL.options
SPEED_SAMPLE = 64


def validate_options(given: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in, or a clear error naming each bad one."""
    return DISTILL_TEXT2SQL.validate(given)


def student_config(teacher_config, d_model: int = 0, layers: int = 0) -> dict[str, Any]:
    """Half the teacher's width (a multiple of 8, at least 32) and layers (at least 1)
    unless given; heads kept where they divide the width."""
    width = d_model or max(32, teacher_config.d_model // 2 // 8 * 8)
    depth = layers or max(1, teacher_config.num_layers // 2)
    heads = teacher_config.num_heads
    while width % heads:
        heads -= 1
    return {"d_model": width, "d_ff": width * 3, "d_kv": width // heads, "num_heads": heads,
            "num_layers": depth, "num_decoder_layers": depth,
            "feed_forward_proj": teacher_config.feed_forward_proj,
            "relative_attention_num_buckets": teacher_config.relative_attention_num_buckets,
            "relative_attention_max_distance": teacher_config.relative_attention_max_distance,
            "dropout_rate": teacher_config.dropout_rate}


def generation_speed(seq, inputs: list[str], beams: int) -> float:
    """Questions answered per second (beam search, batches of 16)."""
    from pgfleet.text2sql.model import generate

    started = time.perf_counter()
    for i in range(0, len(inputs), 16):
        generate(seq, inputs[i:i + 16], beams=beams)
    return len(inputs) / (time.perf_counter() - started)


def distill_text2sql(conn: psycopg.Connection, settings: Settings, run: Run,
                     **options: Any) -> dict[str, Any]:
    """Distill ``from_version`` into a student and register it. ``options`` are checked
    (:meth:`~pgfleet.training.specs.JobSpec.execute` runs it)."""
    import torch

    from pgfleet.models import versions
    from pgfleet.text2sql import model as t2s_model

    torch.set_num_threads(max(1, settings.torch_threads or torch.get_num_threads()))
    run.phase("loading the teacher")
    spec = versions.find(conn, "text2sql", options["from_version"])
    teacher = t2s_model.load(spec.artifact)
    teacher.model.eval()
    # the student reads as the teacher does
    options["mask_values"], options["link_columns"] = teacher.mask_values, teacher.link_columns
    with open_reader(settings, conn) as reader:
        train, held, seen, source = examples_for(conn, reader, run, options)
    config = student_config(teacher.model.config, options["d_model"], options["layers"])
    student = t2s_model.build(config=config, seed=options["seed"], tokenizer=teacher.tokenizer)
    student.mask_values, student.link_columns = teacher.mask_values, teacher.link_columns
    set_max_new_tokens(student, train)
    run.check_cancelled()

    started = time.perf_counter()
    losses = fit(run, student, train, options, teacher=teacher)
    train_s = time.perf_counter() - started
    run.phase(f"evaluating the teacher and the student on {len(held)} held-out examples")
    with open_reader(settings, conn) as reader:
        teacher_held = evaluate(reader, run, teacher, held, beams=options["beams"], seen=seen)
        student_held = evaluate(reader, run, student, held, beams=options["beams"], seen=seen)
    sample = [p.input for p in held[:SPEED_SAMPLE]]
    run.phase("timing generation")
    teacher_speed = generation_speed(teacher, sample, options["beams"])
    student_speed = generation_speed(student, sample, options["beams"])
    teacher_params, student_params = (t2s_model.parameters(teacher),
                                      t2s_model.parameters(student))
    t_acc, s_acc = (teacher_held["execution_accuracy_guided"],
                    student_held["execution_accuracy_guided"])
    return save_and_register(
        conn, settings, run, student, task="distill_text2sql",
        name=options["name"] or spec.name, losses=losses, parent_id=spec.id, metrics={
            "model": "scratch (distilled)", "teacher": spec.label,
            "vocabulary": len(student.tokenizer), "parameters": student_params,
            "student_config": config,
            "examples": {"source": source, "train": len(train), "held_out": len(held),
                         "split": "stable hash of the SQL"},
            "held_out": student_held, "teacher_held_out": teacher_held,
            "compared": {
                "parameters_ratio": round(student_params / teacher_params, 3),
                "questions_per_s": {"teacher": round(teacher_speed, 2),
                                    "student": round(student_speed, 2)},
                "speedup": round(student_speed / teacher_speed, 2),
                "accuracy_kept": round(s_acc / t_acc, 3) if t_acc else None},
            "options": options, "train_seconds": round(train_s, 1)})
