"""``pgfleet bench text2sql``: a text2sql version on the defog benchmark, by execution accuracy.

The benchmark's databases are loaded on the fleet's PostgreSQL server (``defog_NAME``, see
:mod:`pgfleet.text2sql.defog`) and each question is answered exactly as ``pgfleet sql``
answers one: the question's database is introspected, its values looked up, the model's
beams checked in order by the guard on that database, the first that passes run read-only,
all of it in a session of the reader login (the reader URL with that database's name).
A question with no candidate that passes counts as wrong. Evaluation only: nothing here
trains on these questions.

``--reference gold`` and ``--reference select1`` score the benchmark's own gold SQL (100%
expected) and ``SELECT 1`` (about 0%) through the same path: the sanity checks of the scorer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from pgfleet.errors import PgfleetError
from pgfleet.text2sql import defog

logger = logging.getLogger(__name__)

REFERENCES = ("gold", "select1")


def model_predictor(database_url: str, reader_url: str | None, version: str | None, beams: int,
                    stack: contextlib.ExitStack):
    """``predict(question, db_name, schema_text)`` with a text2sql version, and its label."""
    from pgfleet import db
    from pgfleet.models import versions
    from pgfleet.text2sql.generate import cached_model, choose
    from pgfleet.text2sql.guard import check_sql
    from pgfleet.text2sql.inputs import prepare
    from pgfleet.text2sql.model import generate
    from pgfleet.text2sql.schema_text import introspect, user_schemas
    from pgfleet.text2sql.values import unmask_sql

    with db.connect(database_url, autocommit=True) as conn:
        spec = versions.find(conn, "text2sql", version or None)
    model = cached_model(spec.artifact)
    connect = defog.url_factory(database_url)
    open_reader = defog.reader_factory(reader_url)
    readers: dict[str, Any] = {}
    schemas: dict[str, Any] = {}

    def predict(question: str, db_name: str, _schema_text: str) -> str:
        if db_name not in readers:
            with connect(defog.PREFIX + db_name) as conn:
                schemas[db_name] = introspect(conn, user_schemas(conn), exclude=())
            readers[db_name] = stack.enter_context(open_reader(defog.PREFIX + db_name))
        reader = readers[db_name]
        prepared = prepare(question, schemas[db_name], reader, mask_values=model.mask_values,
                           link_columns=model.link_columns)
        candidates = generate(model, [prepared.input], beams=beams)[0]
        choice = choose(candidates, lambda sql: check_sql(sql, reader),
                        lambda text: unmask_sql(text, prepared.values))
        if choice.sql is None:  # a wrong answer, with the guard's first reason
            first = choice.rejected[0].reasons[0] if choice.rejected else ""
            raise PgfleetError(f"{choice.why}; beam 0: {first}")
        return choice.sql

    return predict, spec.label


def reference_predictor(kind: str, questions: list[defog.Question]):
    by_prompt = {q.prompt: q.query for q in questions}

    def predict(question: str, _db_name: str, _schema_text: str) -> str:
        if kind == "gold":
            return defog.expand_gold(by_prompt[question])[0]
        return "SELECT 1"

    return predict


def run(database_url: str, *, reader_url: str | None, version: str | None = None,
        beams: int = 4, limit: int | None = None, reference: str | None = None,
        questions_csv: Path | None = None) -> dict[str, Any]:
    """The report: accuracy overall, per category and per database, every question's
    outcome, and the command's parameters. SQL runs as the reader login of ``reader_url``."""
    started = time.perf_counter()
    base = defog.default_dir()
    path = questions_csv or base / "questions_postgres.csv"
    with contextlib.ExitStack() as stack:
        if reference is not None:
            if reference not in REFERENCES:
                raise ValueError(f"reference must be one of {REFERENCES}, not {reference!r}")
            questions = defog.read_questions(path)[:limit] if path.is_file() else []
            predict, label = reference_predictor(reference, questions), f"reference:{reference}"
        else:
            predict, label = model_predictor(database_url, reader_url, version, beams, stack)
        report = defog.run_benchmark(database_url, predict, reader_url=reader_url,
                                     questions_csv=path, limit=limit)
    return {"model": label, "beams": beams if reference is None else None,
            "questions_file": str(path), "limit": limit,
            "seconds": round(time.perf_counter() - started, 1), **report.as_dict()}
