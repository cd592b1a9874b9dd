"""The defog held-out benchmark: 11 PostgreSQL databases, 210 questions, execution accuracy.

Evaluation only: nothing here trains or tunes on it. :func:`load_databases` loads each
``databases/NAME.sql`` into a database of its own, ``defog_NAME``, and lets the reader role
read it; a database whose script inserts dates relative to today is reloaded on every run,
the others only when their script changed. :func:`score` asks ``predict(question, db_name,
schema_text)`` for SQL, runs it exactly as production runs generated SQL
(:func:`~pgfleet.text2sql.guard.run_readonly`: the allow-list, a session of the reader login
on that database, a read-only transaction, a timeout, bounds in rows and bytes), runs the
gold alternatives (:func:`~pgfleet.text2sql.scoring.expand_gold`, in the same session,
read-only, but not through the allow-list: they are trusted, and the benchmark must not
depend on how the guard rewrites them), and judges the results with the rules of
:mod:`~pgfleet.text2sql.scoring`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import schema as sql_files
from pgfleet.errors import ConfigurationError, PgfleetError, QueryTimeout, SqlRejected
from pgfleet.text2sql import readonly
from pgfleet.text2sql.guard import run_readonly
from pgfleet.text2sql.readonly import Reader
from pgfleet.text2sql.schema_text import introspect, serialize, user_schemas
from pgfleet.text2sql.scoring import Table, compare, expand_gold, order_matters

logger = logging.getLogger(__name__)

PREFIX = "defog_"
TIMEOUT_MS = 10_000
ROW_CAP = 50_000
#: a result's bound in bytes: gold results of the benchmark are small, 50,000 rows at most
MAX_BYTES = 64 * 1024 * 1024
_DATE_RELATIVE = re.compile(r"\b(current_date|current_timestamp|localtimestamp|now\s*\()",
                            re.IGNORECASE)

#: opens an autocommit connection to a database of the server by name; None: the fleet's own
ConnFactory = Callable[[str | None], psycopg.Connection]
#: opens a session of the reader login on a database of the server, by name
ReaderFactory = Callable[[str], Reader]
#: (question, db_name, schema_text) -> SQL
Predict = Callable[[str, str, str], str]


def default_dir() -> Path:
    """``$PGFLEET_DEFOG_DIR``, else the copy in the tests' fixtures (``tests/fixtures/defog``,
    Apache-2.0, see its README), else ``shared/benchmarks/text2sql/defog`` in or next to the
    checkout."""
    configured = os.environ.get("PGFLEET_DEFOG_DIR")
    if configured:
        return Path(configured)
    root = Path(__file__).resolve().parents[2]
    candidates = [root / "tests/fixtures/defog"] + [
        base / "shared/benchmarks/text2sql/defog" for base in (root, root.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0])


@dataclass
class Question:
    number: int  # 1-based, in file order
    question: str
    query: str
    db_name: str
    category: str
    instructions: str = ""

    @property
    def prompt(self) -> str:
        """The question as the model gets it: with its instructions, when it has some."""
        if not self.instructions.strip():
            return self.question
        return f"{self.question}\nInstructions: {self.instructions.strip()}"


@dataclass
class Outcome:
    number: int
    question: str
    db: str
    category: str
    predicted: str
    correct: bool
    match: str | None = None  # exact or subset
    error: str | None = None


@dataclass
class Report:
    scored: int = 0
    correct: int = 0
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    by_database: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[Outcome] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)  # gold fails here
    load_s: float = 0.0
    score_s: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 4), **asdict(self)}


def read_questions(path: Path) -> list[Question]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Question(i, r["question"], r["query"], r["db_name"], r["query_category"],
                         r.get("instructions") or "")
                for i, r in enumerate(csv.DictReader(handle), start=1)]


# ------------------------------------------------------------------------- loading
def load_databases(conn_factory: ConnFactory, names: list[str], databases_dir: Path) -> dict[str, str]:
    """Load each named benchmark database (``defog_NAME``); returns NAME -> what was done
    (``loaded`` or ``cached``)."""
    done = {}
    with conn_factory(None) as admin:
        for name in names:
            script = (databases_dir / f"{name}.sql").read_text("utf-8")
            digest = "pgfleet defog sha256:" + hashlib.sha256(script.encode()).hexdigest()
            dbname = PREFIX + name
            current = admin.execute(sql_files.query("defog_database_comment"),
                                    {"name": dbname}).fetchone()
            if current and current[0] == digest and not _DATE_RELATIVE.search(script):
                with conn_factory(dbname) as conn:  # loaded before the bound in bytes
                    readonly.install_result_bound(conn)
                done[name] = "cached"
                continue
            _recreate(admin, conn_factory, dbname, script)
            admin.execute(sql.SQL(sql_files.query("defog_comment_database")).format(
                db=sql.Identifier(dbname), comment=sql.Literal(digest)))
            done[name] = "loaded"
    return done


def _recreate(admin: psycopg.Connection, conn_factory: ConnFactory, dbname: str,
              script: str) -> None:
    ident = sql.Identifier(dbname)
    admin.execute(sql.SQL(sql_files.query("defog_drop_database")).format(db=ident))
    admin.execute(sql.SQL(sql_files.query("defog_create_database")).format(db=ident))
    with conn_factory(dbname) as conn:
        try:
            conn.execute(script)  # no parameters: sent as one multi-statement script
            for nsp in user_schemas(conn):
                conn.execute(sql.SQL(sql_files.query("defog_grant_reader")).format(
                    schema=sql.Identifier(nsp)))
            readonly.install_result_bound(conn)
        except psycopg.errors.UndefinedObject as exc:
            raise ConfigurationError(f"{dbname}: {exc} (the role {readonly.READER_ROLE} is "
                                     "created by `pgfleet db migrate`)") from exc
        except psycopg.Error as exc:
            raise PgfleetError(f"{dbname}: loading its script failed: {exc}") from exc


# ------------------------------------------------------------------------- scoring
def score(conn_factory: ConnFactory, predict: Predict, *, reader_factory: ReaderFactory,
          questions: list[Question], databases_dir: Path, timeout_ms: int = TIMEOUT_MS,
          row_cap: int = ROW_CAP,
          gold_cache: dict[tuple[str, str], Table | str] | None = None) -> Report:
    """Load the questions' databases (``conn_factory``, an owner's connections), ask
    ``predict`` for each question, run and judge its SQL in a session of the reader login
    on the question's database (``reader_factory``).

    ``gold_cache`` (db, gold SQL) -> result or error may be shared between runs on the same
    day (results of the date-relative databases change with the date)."""
    report = Report()
    started = time.perf_counter()
    names = sorted({q.db_name for q in questions})
    load_databases(conn_factory, names, databases_dir)
    report.load_s = round(time.perf_counter() - started, 2)
    cache = gold_cache if gold_cache is not None else {}
    with contextlib.ExitStack() as stack:
        conns = {n: stack.enter_context(conn_factory(PREFIX + n)) for n in names}
        schemas = {n: serialize(introspect(c, user_schemas(c), exclude=())) for n, c in conns.items()}
        readers = {n: stack.enter_context(reader_factory(PREFIX + n)) for n in names}
        for q in questions:
            reader = readers[q.db_name]
            golds = _gold_results(reader, q, cache, timeout_ms, row_cap)
            errors = [g for g in golds if isinstance(g, str)]
            if len(errors) == len(golds):
                report.excluded.append({"number": q.number, "db": q.db_name, "question": q.question,
                                        "reason": "no gold alternative runs here: "
                                                  + " | ".join(dict.fromkeys(errors))})
                continue
            report.rows.append(_judge(reader, q, predict, schemas[q.db_name],
                                      [g for g in golds if isinstance(g, Table)],
                                      timeout_ms, row_cap))
    _tally(report)
    report.score_s = round(time.perf_counter() - started - report.load_s, 2)
    return report


def _gold_results(reader: Reader, q: Question, cache: dict, timeout_ms: int,
                  row_cap: int) -> list[Table | str]:
    out = []
    for gold in expand_gold(q.query):
        key = (q.db_name, gold)
        if key not in cache:
            cache[key] = _run_trusted(reader, gold, timeout_ms, row_cap)
        out.append(cache[key])
    return out


def _run_trusted(reader: Reader, text: str, timeout_ms: int, row_cap: int) -> Table | str:
    try:
        result = readonly.execute_readonly(reader, text, timeout_ms=timeout_ms, row_cap=row_cap,
                                           max_bytes=MAX_BYTES)
    except (SqlRejected, QueryTimeout) as exc:
        return str(exc)
    if result.truncated:
        return f"more than {row_cap} rows"
    return Table(result.columns, result.rows)


def _judge(reader: Reader, q: Question, predict: Predict, schema_text: str,
           golds: list[Table], timeout_ms: int, row_cap: int) -> Outcome:
    outcome = Outcome(q.number, q.question, q.db_name, q.category, "", False)
    try:
        outcome.predicted = predict(q.prompt, q.db_name, schema_text)
    except Exception as exc:  # noqa: BLE001 - a failing model is a wrong answer, not a crash
        logger.warning("predict failed", extra={"number": q.number, "error": str(exc)})
        outcome.error = f"predict failed: {type(exc).__name__}: {exc}"
        return outcome
    try:
        result = run_readonly(reader, str(outcome.predicted), timeout_ms=timeout_ms,
                              row_cap=row_cap, max_bytes=MAX_BYTES)
    except (SqlRejected, QueryTimeout) as exc:
        outcome.error = str(exc)
        return outcome
    generated = Table(result.columns, result.rows)
    ordered = order_matters(q.category, q.question)
    matches = [compare(gold, generated, ordered) for gold in golds]
    outcome.match = "exact" if "exact" in matches else "subset" if "subset" in matches else None
    outcome.correct = outcome.match is not None
    return outcome


def _tally(report: Report) -> None:
    report.scored = len(report.rows)
    report.correct = sum(r.correct for r in report.rows)
    for attr, key in (("by_category", "category"), ("by_database", "db")):
        totals = Counter(getattr(r, key) for r in report.rows)
        rights = Counter(getattr(r, key) for r in report.rows if r.correct)
        setattr(report, attr, {k: {"correct": rights[k], "total": n,
                                   "accuracy": round(rights[k] / n, 4)}
                               for k, n in sorted(totals.items())})


# ------------------------------------------------------------------------- entry point
def url_factory(database_url: str) -> ConnFactory:
    """Connections to databases of the server at ``database_url``; None: that database."""
    def connect(name: str | None) -> psycopg.Connection:
        conninfo = database_url if name is None else make_conninfo(database_url, dbname=name)
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=10,
                               application_name="pgfleet-defog")
    return connect


def reader_factory(reader_url: str | None) -> ReaderFactory:
    """Sessions of the reader login (``reader_url``) on databases of its server, by name."""
    def connect(name: str) -> Reader:
        return readonly.connect_reader(reader_url, dbname=name)
    return connect


def run_benchmark(database_url: str, predict: Predict, *, reader_url: str | None,
                  questions_csv: Path | None = None, limit: int | None = None,
                  timeout_ms: int = TIMEOUT_MS, gold_cache: dict | None = None) -> Report:
    """Score ``predict`` on the defog questions (the first ``limit`` of them when given),
    loading the benchmark databases on the server of ``database_url`` and running SQL as
    the reader login of ``reader_url`` (the same server)."""
    base = default_dir()
    path = questions_csv or base / "questions_postgres.csv"
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file; set PGFLEET_DEFOG_DIR to the folder "
                                 "holding questions_postgres.csv and databases/")
    questions = read_questions(path)[:limit]
    readonly.connect_reader(reader_url).close()  # a missing or wider login: say so first
    return score(url_factory(database_url), predict, reader_factory=reader_factory(reader_url),
                 questions=questions,
                 databases_dir=path.parent / "databases", timeout_ms=timeout_ms,
                 gold_cache=gold_cache)
