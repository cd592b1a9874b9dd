"""How a text2sql model is measured on the held-out pairs: exact match and execution accuracy.

Exact match compares SQL normalized by sqlglot; execution accuracy runs the gold and the
generated SQL read-only through the guard, in a session of the reader login, and compares
the result sets with the defog rules of :mod:`~pgfleet.text2sql.scoring`; both for the top
beam and for the first beam that passes the guard, as ``generate_sql`` answers.
"""

from __future__ import annotations

import functools
from typing import Any

from pgfleet.errors import PgfleetError
from pgfleet.text2sql.readonly import Reader
from pgfleet.training.run_handle import Run
from pgfleet.training.text2sql_data import Pair

EVAL_TIMEOUT_MS = 5000
EVAL_ROW_CAP = 2000


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
                            functools.partial(unmask_sql, values=pair.values))
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
