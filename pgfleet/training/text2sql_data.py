"""``train_text2sql``'s data: the (question, SQL) examples and the pairs the model learns from.

The examples are the connected database's rows of ``text2sql_examples`` (``db_name`` NULL);
when there are none and ``synth_if_empty`` is set, a bootstrap set is synthesized from the
live schema (:mod:`~pgfleet.text2sql.synth`) for this run only: it is not stored. Each becomes
a :class:`Pair`: the model's input (``question | table : col , col | ...`` over the tables the
question names, :mod:`~pgfleet.text2sql.inputs`) and the SQL it learns to write. The held-out
split is a stable hash of the SQL (:func:`held_out`), so that the phrasings of one query are
all on the same side.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

import schema as sql_files
from pgfleet.errors import PgfleetError
from pgfleet.settings import Settings, resolve_urls
from pgfleet.text2sql.readonly import Reader
from pgfleet.training.run_handle import Run


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
    counted = conn.execute(sql_files.query("text2sql_other_examples")).fetchone()
    other = counted[0] if counted is not None else 0  # a count: always one row
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
    synthesized: dict[tuple[str, str], str | None] = {}
    for round_ in range(options["synth_rounds"]):
        result = synthesize(conn, reader, schema=schema, seed=options["seed"] + round_,
                            per_template=options["synth_per_template"],
                            phrasings=options["synth_phrasings"])
        for e in result.examples:
            synthesized.setdefault((e.question, e.sql), e.template)
    if not synthesized:
        raise PgfleetError("text2sql_examples is empty and the live schema yields no "
                           "synthetic examples: create tables with rows (and grant SELECT on "
                           "them to pgfleet_reader)")
    return ([(q, s, t) for (q, s), t in synthesized.items()],
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
