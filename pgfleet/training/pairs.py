"""Training pairs: loading them from a file, mining them from ``docs``, splitting them.

A pair is ``(text_a, text_b)`` with an optional ``score`` in [0, 1]: a query and a passage
that answers it (positive pairs, trained with in-batch negatives), or two texts and how
similar they are (scored pairs, trained with a cosine-similarity loss).

**The miner** turns the user's own docs into positive pairs when no labelled pairs exist.
For each non-empty doc it takes the first rule that applies:

1. ``heading``: the doc starts with a Markdown heading (``# Title``) followed by a body of at
   least 8 words: (title, body);
2. ``title``: the doc's metadata has a ``title``, ``heading`` or ``question`` string: (that,
   content);
3. ``question``: the doc's first line or sentence ends with ``?`` and the rest has at least 8
   words: (question, rest);
4. ``first_sentence``: the first sentence (4-30 words) and the rest of the doc (at least 20
   words): the inverse cloze task, a summary line as the query for the text it summarises.

Docs that match no rule give no pair. Mined pairs teach the model what *this* corpus's
titles, questions and summaries look like next to its passages; they are no substitute for
real queries with judged answers, and the held-out metric is measured on mined pairs too.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import schema
from pgfleet import records
from pgfleet.errors import PgfleetError

_HEADING = re.compile(r"\A\s*#{1,6}[ \t]+(?P<title>[^\n]+)\n+(?P<body>.+)\Z", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
MAX_TEXT_CHARS = 20_000


@dataclass
class Pair:
    text_a: str
    text_b: str
    score: float | None = None
    source: str = ""
    doc_id: int | None = None

    @property
    def key(self) -> str:
        return hashlib.md5(f"{self.text_a}\x00{self.text_b}".encode()).hexdigest()  # noqa: S324


PairProblem = records.Problem


@dataclass
class ParsedPairs:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[PairProblem] = field(default_factory=list)


# ------------------------------------------------------------------------- loading files
def parse_file(path: Path) -> ParsedPairs:
    """Pairs from a CSV (header: text_a,text_b[,score]) or JSONL file (one object per line
    with text_a, text_b and optionally score); every bad row is reported with its line."""
    text = records.read_text(path, (".csv", ".tsv", ".jsonl", ".ndjson", ".json"),
                             "a .csv, .tsv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        items = records.csv_items(text, required=("text_a", "text_b"), optional=("score",),
                                  expected="text_a and text_b (and optionally score)",
                                  delimiter="\t" if suffix == ".tsv" else ",")
    else:
        items = records.jsonl_items(text, "text_a and text_b")
    out = ParsedPairs()
    for number, item in items:
        if isinstance(item, records.Problem):
            out.problems.append(item)
        else:
            _validate(item, number, f"file:{path.name}", out)
    return out


def _validate(item: dict[str, Any], number: int, source: str, out: ParsedPairs) -> None:
    unknown = set(item) - {"text_a", "text_b", "score"}
    if unknown:
        out.problems.append(PairProblem(number, f"unknown fields {sorted(unknown)}; expected "
                                                "text_a, text_b and optionally score"))
        return
    texts = []
    for name in ("text_a", "text_b"):
        value = item.get(name)
        if not isinstance(value, str):
            out.problems.append(PairProblem(number, f"{name} is missing or not a string"))
            return
        if not value.strip():
            out.problems.append(PairProblem(number, f"{name} is empty"))
            return
        if len(value) > MAX_TEXT_CHARS:
            out.problems.append(PairProblem(number, f"{name} is longer than {MAX_TEXT_CHARS} "
                                                    "characters"))
            return
        texts.append(value.strip())
    score = item.get("score")
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            out.problems.append(PairProblem(number, f"score {item['score']!r} is not a number"))
            return
        if not (0.0 <= score <= 1.0) or math.isnan(score):
            out.problems.append(PairProblem(number, f"score {score} is outside [0, 1]"))
            return
    out.pairs.append(Pair(texts[0], texts[1], score, source))


def insert_pairs(conn: psycopg.Connection, pairs: list[Pair]) -> int:
    """Insert pairs, skipping those already stored; returns how many were new."""
    if not pairs:
        return 0
    with conn.transaction():
        cur = conn.execute(
            schema.query("training_insert_pairs"),
            ([p.text_a for p in pairs], [p.text_b for p in pairs], [p.score for p in pairs],
             [p.source for p in pairs], [p.doc_id for p in pairs]))
    return cur.rowcount


# ------------------------------------------------------------------------- mining
def mine_one(content: str, metadata: dict[str, Any] | None = None) -> tuple[str, str, str] | None:
    """(rule, text_a, text_b) for one doc, or None when no rule applies."""
    content = content.strip()
    if not content:
        return None
    match = _HEADING.match(content)
    if match:
        title, body = match["title"].strip(" #"), match["body"].strip()
        if title and len(body.split()) >= 8:
            return "heading", title, body
    for key in ("title", "heading", "question"):
        value = (metadata or {}).get(key)
        if isinstance(value, str) and value.strip() and value.strip() != content:
            return "title", value.strip(), content
    first_line, _, rest_lines = content.partition("\n")
    if first_line.strip().endswith("?") and len(rest_lines.split()) >= 8:
        return "question", first_line.strip(), rest_lines.strip()
    parts = _SENTENCE_END.split(content, maxsplit=1)
    if len(parts) == 2:
        first, rest = parts[0].strip(), parts[1].strip()
        if first.endswith("?") and len(rest.split()) >= 8:
            return "question", first, rest
        if 4 <= len(first.split()) <= 30 and len(rest.split()) >= 20:
            return "first_sentence", first, rest
    return None


def mine_docs(conn: psycopg.Connection, limit: int | None = None) -> tuple[list[Pair], Counter]:
    """Positive pairs mined from the table's docs (see the module docstring)."""
    pairs: list[Pair] = []
    rules: Counter = Counter()
    with conn.transaction(), conn.cursor(name="pgfleet_mine") as cur:
        cur.itersize = 2000
        cur.execute(schema.query("training_docs_to_mine"), (limit,))  # LIMIT NULL: no limit
        for doc_id, content, metadata in cur:
            mined = mine_one(content, metadata)
            if mined is None:
                rules["none"] += 1
                continue
            rule, text_a, text_b = mined
            rules[rule] += 1
            pairs.append(Pair(text_a, text_b, None, f"mined:{rule}", doc_id))
    return pairs, rules


def load_pairs(conn: psycopg.Connection, *, source: str = "auto",
               limit: int | None = None) -> tuple[list[Pair], str]:
    """The pairs a training run uses: ``table`` (training_pairs), ``mined`` (mined from docs
    now, not stored) or ``auto`` (the table when it holds pairs, else mined)."""
    if source not in ("auto", "table", "mined"):
        raise PgfleetError(f"pairs must be auto, table or mined, not {source!r}")
    if source in ("auto", "table"):
        rows = conn.execute(schema.query("training_pairs_listing"), (limit,)).fetchall()
        if rows or source == "table":
            if not rows:
                raise PgfleetError("training_pairs is empty: load pairs with `pgfleet train "
                                   "data load FILE`, mine them with `pgfleet train data mine`, "
                                   "or train with pairs=mined")
            return [Pair(*r) for r in rows], f"training_pairs ({len(rows)})"
    pairs, rules = mine_docs(conn, limit)
    if not pairs:
        raise PgfleetError("no training pairs: training_pairs is empty and no doc matched a "
                           "mining rule (headings, titles, questions, or a first sentence "
                           "followed by 20 words)")
    detail = ", ".join(f"{k} {v}" for k, v in sorted(rules.items()) if k != "none")
    return pairs, f"mined from docs ({detail})"


# ------------------------------------------------------------------------- splitting
def split(pairs: list[Pair], eval_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held out), decided by a hash of each pair's query: stable from run to run and
    as pairs are added, and all pairs of one query fall on the same side."""
    if not 0.0 < eval_fraction < 1.0:
        raise PgfleetError(f"eval_fraction must be between 0 and 1, not {eval_fraction}")
    train: list[Pair] = []
    held: list[Pair] = []
    for pair in pairs:
        bucket = int(hashlib.md5(pair.text_a.encode()).hexdigest()[:8], 16) % 10_000  # noqa: S324
        (held if bucket < eval_fraction * 10_000 else train).append(pair)
    if len(held) < 5 or len(train) < 5:
        raise PgfleetError(f"{len(pairs)} pairs are too few to hold out {eval_fraction:.0%} "
                           "and still train: at least 5 on each side are needed")
    return train, held
