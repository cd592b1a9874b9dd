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
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

import schema as sql_files
from pgfleet.errors import PgfleetError
from pgfleet.models import versions
from pgfleet.settings import Settings, resolve_urls
from pgfleet.text2sql.readonly import Reader
from pgfleet.training.jobs import register_under_lock, run_artifact_dir
from pgfleet.training.runs import Run, optimizer_step, save_loss_curve
from pgfleet.training.specs import TRAIN_TEXT2SQL

logger = logging.getLogger(__name__)

#: the job's options (declared, with their rules, in :mod:`pgfleet.training.specs`)
OPTIONS = TRAIN_TEXT2SQL.options
#: the size of a BPE vocabulary trained on the examples (smaller when they hold fewer pieces)
BPE_VOCAB = 1000
EVAL_TIMEOUT_MS = 5000
EVAL_ROW_CAP = 2000


def validate_options(given: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in, or a clear error naming each bad one."""
    return TRAIN_TEXT2SQL.validate(given)


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Pair:
    question: str
    sql: str
    template: str | None
    input: str
    target: str = ""                 # what the model learns to write: sql, values masked
    values: tuple = ()               # the question's masked values, to put back

    @property
    def shape(self) -> tuple[str, str]:
        return (self.input, self.target or self.sql)


def held_out(sql: str, fraction: float) -> bool:
    """Whether the example of this SQL is held out: a stable hash, the same on every run."""
    digest = hashlib.sha256(" ".join(sql.split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def open_reader(settings: Settings, conn: psycopg.Connection) -> Reader:
    """A session of the reader login on the job's database: the examples' SQL is checked and
    run there, never on the job's own connection."""
    from pgfleet.text2sql.readonly import check_same_database, connect_reader

    reader = connect_reader(resolve_urls(settings).reader_url)
    try:
        check_same_database(reader, conn)
    except BaseException:
        reader.close()
        raise
    return reader


def load_examples(conn: psycopg.Connection, reader: Reader, options: dict[str, Any]
                  ) -> tuple[list[tuple[str, str, str | None]], str]:
    """(question, sql, template) rows and where they came from (synthesized ones are
    checked in ``reader``)."""
    rows = [tuple(r) for r in conn.execute(sql_files.query("text2sql_training_examples"))]
    other = conn.execute(sql_files.query("text2sql_other_examples")).fetchone()[0]
    if rows:
        note = f" ({other} for other databases or schemas left out)" if other else ""
        return rows, f"text2sql_examples{note}"
    if not options["synth_if_empty"]:
        raise PgfleetError("text2sql_examples holds no examples for this database: load some "
                           "(pgfleet text2sql load FILE), synthesize them (pgfleet text2sql "
                           "synth), or set synth_if_empty")
    from pgfleet.text2sql.schema_text import introspect
    from pgfleet.text2sql.synth import synthesize

    # each round samples other values from the tables: more distinct queries to learn from
    schema = introspect(conn)
    rows: dict[tuple[str, str], str | None] = {}
    for round_ in range(options["synth_rounds"]):
        result = synthesize(conn, reader, schema=schema, seed=options["seed"] + round_,
                            per_template=options["synth_per_template"],
                            phrasings=options["synth_phrasings"])
        for e in result.examples:
            rows.setdefault((e.question, e.sql), e.template)
    if not rows:
        raise PgfleetError("text2sql_examples is empty and the live schema yields no "
                           "synthetic examples: create tables with rows (and grant SELECT on "
                           "them to pgfleet_reader)")
    return ([(q, s, t) for (q, s), t in rows.items()],
            f"synthesized from the live schema for this run ({options['synth_rounds']} "
            "round(s) of sampled values; not stored)")


def make_pairs(rows: list[tuple[str, str, str | None]], schema, options: dict[str, Any],
               reader: Reader | None = None) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs. With ``mask_values`` the model reads the question with
    its values masked and learns the SQL with placeholders (:mod:`~pgfleet.text2sql.values`)."""
    from pgfleet.text2sql.inputs import prepare
    from pgfleet.text2sql.values import mask_sql

    if options["max_examples"]:
        rows = rows[:options["max_examples"]]
    pairs = []
    for question, sql, template in rows:
        prepared = prepare(question, schema, reader, mask_values=options["mask_values"],
                           link_columns=options["link_columns"])
        target = mask_sql(sql, prepared.values) if options["mask_values"] else sql
        pairs.append(Pair(question, sql, template, prepared.input, target,
                          tuple(prepared.values)))
    train = [p for p in pairs if not held_out(p.sql, options["eval_fraction"])]
    held = [p for p in pairs if held_out(p.sql, options["eval_fraction"])]
    # with values masked, many questions read the same: at most max_copies of each reading,
    # so that frequent readings are not drilled at the expense of rare ones, and a reading
    # with many values (a date range of every table) still weighs more than a one-off
    copies: Counter = Counter()
    kept = []
    for pair in train:
        copies[pair.shape] += 1
        if copies[pair.shape] <= options["max_copies"]:
            kept.append(pair)
    train = kept
    if not train or not held:
        raise PgfleetError(f"{len(pairs)} example(s) leave {len(train)} to train on and "
                           f"{len(held)} to evaluate: give more examples or another "
                           "eval_fraction")
    return train, held


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


# ----------------------------------------------------------------------------- metrics
def normalize_sql(text: str) -> str:
    """SQL in one canonical spelling (sqlglot's), for exact match; whitespace-collapsed
    text when sqlglot cannot parse it."""
    import sqlglot

    try:
        return sqlglot.parse_one(text, read="postgres").sql(dialect="postgres", normalize=True)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError):
        return " ".join(text.split())


def _result(reader: Reader, sql: str):
    from pgfleet.errors import QueryTimeout, SqlRejected
    from pgfleet.text2sql.guard import run_readonly
    from pgfleet.text2sql.scoring import Table

    try:
        result = run_readonly(reader, sql, timeout_ms=EVAL_TIMEOUT_MS, row_cap=EVAL_ROW_CAP)
    except (SqlRejected, QueryTimeout):
        return None
    return Table(result.columns, result.rows)


def same_result(reader: Reader, question: str, gold_sql: str, gold, sql: str) -> bool:
    from pgfleet.text2sql.scoring import compare, order_matters

    if gold is None:
        return False
    got = _result(reader, sql)
    ordered = order_matters("", question) or " order by " in f" {gold_sql.lower()} "
    return got is not None and compare(gold, got, ordered) is not None


def evaluate(reader: Reader, run: Run, seq, held: list[Pair], *, beams: int,
             batch_size: int = 16, seen: set | None = None) -> dict[str, Any]:
    """Exact match and execution accuracy of the top beam, and execution accuracy of the
    beam that ``generate_sql`` would choose (the first to pass the guard), gold and
    generated SQL run in ``reader``, a session of the reader login. With ``seen``
    (the training pairs' (input, target)), the same for the held-out pairs whose masked
    reading is not among them: the values are not what makes them new."""
    from pgfleet.text2sql.generate import choose
    from pgfleet.text2sql.guard import check_sql
    from pgfleet.text2sql.model import generate
    from pgfleet.text2sql.values import unmask_sql

    exact = top_exec = guided_exec = no_candidate = skipped = 0
    novel = [0, 0]
    per_template: dict[str, list[int]] = {}
    for start in range(0, len(held), batch_size):
        run.check_cancelled()
        batch = held[start:start + batch_size]
        outputs = generate(seq, [p.input for p in batch], beams=beams)
        for pair, candidates in zip(batch, outputs, strict=True):
            gold = _result(reader, pair.sql)
            if gold is None:
                skipped += 1
                continue
            choice = choose(candidates, lambda sql: check_sql(sql, reader),
                            lambda text, values=pair.values: unmask_sql(text, values))
            top = choice.candidates[0] if choice.candidates else ""
            exact += normalize_sql(top) == normalize_sql(pair.sql)
            top_ok = same_result(reader, pair.question, pair.sql, gold, top)
            top_exec += top_ok
            guided_ok = choice.sql is not None and (
                top_ok if choice.beam == 0
                else same_result(reader, pair.question, pair.sql, gold, choice.sql))
            guided_exec += guided_ok
            no_candidate += choice.sql is None
            counts = per_template.setdefault(pair.template or "-", [0, 0])
            counts[0] += guided_ok
            counts[1] += 1
            if seen is not None and pair.shape not in seen:
                novel[0] += guided_ok
                novel[1] += 1
        run.progress(run_step(run), phase=f"evaluating {min(start + batch_size, len(held))}"
                                          f"/{len(held)}")
    scored = len(held) - skipped
    if not scored:
        raise PgfleetError("no held-out gold SQL could run: check the examples")
    return {
        "examples": scored, "gold_failed": skipped, "beams": beams,
        "exact_match": round(exact / scored, 4),
        "execution_accuracy": round(top_exec / scored, 4),
        "execution_accuracy_guided": round(guided_exec / scored, 4),
        "no_candidate_passed": no_candidate,
        "unseen_readings": {"examples": novel[1],
                            "execution_accuracy_guided":
                                round(novel[0] / novel[1], 4) if novel[1] else None},
        "per_template": {k: round(v[0] / v[1], 4) for k, v in sorted(per_template.items())},
    }


def run_step(run: Run) -> int:
    return int(run._state.get("step") or 0)  # noqa: SLF001 - keep the step while evaluating


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


def examples_for(conn: psycopg.Connection, reader: Reader, run: Run, options: dict[str, Any]
                 ) -> tuple[list[Pair], list[Pair], set, str]:
    """Training pairs, held-out pairs (at most max_eval), the training readings, the source."""
    from pgfleet.text2sql.schema_text import introspect

    run.phase("reading the examples")
    rows, source = load_examples(conn, reader, options)
    train, held = make_pairs(rows, schema=introspect(conn), options=options, reader=reader)
    if len(held) > options["max_eval"]:
        # a sample, not the first ones: examples come grouped by template
        chosen = sorted(random.Random(options["seed"]).sample(range(len(held)),
                                                              options["max_eval"]))
        held = [held[i] for i in chosen]
    return train, held, {p.shape for p in train}, source


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
