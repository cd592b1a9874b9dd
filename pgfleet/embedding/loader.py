"""``pgfleet load``: text, markdown and JSONL files into ``docs``, in batches.

* ``.jsonl``: one object per line with ``content`` (required, a string) and ``metadata``
  (optional, an object); a bad line is reported with its number and skipped. JSON can
  write what PostgreSQL cannot store (``\\u0000``, a lone surrogate such as ``\\ud800``,
  ``NaN``): such a line is bad too, and the other lines are loaded.
* ``.md``: one doc per section (a heading with the text under it).
* anything else is read as text: one doc per paragraph (blocks separated by blank lines).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

import schema

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst", ".jsonl", ".ndjson"}
_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)


@dataclass
class LoadProblem:
    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


@dataclass
class LoadResult:
    inserted: int = 0
    problems: list[LoadProblem] = field(default_factory=list)


def files_under(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return out


def read_docs(path: Path, problems: list[LoadProblem]) -> Iterator[tuple[str, dict]]:
    for content, metadata, _line in read_located(path, problems):
        yield content, metadata


def read_located(path: Path, problems: list[LoadProblem]
                 ) -> Iterator[tuple[str, dict, int | None]]:
    """Each doc of the file with its line number (JSONL; None for other files)."""
    suffix = path.suffix.lower()
    text = _read_text(path, problems)
    if text is None:
        return
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path, text, problems)
    elif suffix in (".md", ".markdown"):
        for i, section in enumerate(_markdown_sections(text)):
            yield section, {"source": str(path), "section": i}, None
    else:
        for i, para in enumerate(p.strip() for p in re.split(r"\n\s*\n", text)):
            if para:
                yield para, {"source": str(path), "paragraph": i}, None


def _read_text(path: Path, problems: list[LoadProblem]) -> str | None:
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(LoadProblem(str(path), None, f"not UTF-8 text ({exc.reason})"))
        return None
    if "\x00" in text:
        # PostgreSQL text cannot hold NUL
        text = text.replace("\x00", "")
        problems.append(LoadProblem(str(path), None, "NUL characters removed"))
    return text


class _NotStorable(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotStorable(f"{name} is not a number PostgreSQL's jsonb can store")


def unstorable(value: object, what: str) -> str | None:
    """Why PostgreSQL cannot store ``value`` (a string, or JSON for jsonb), else None:
    text and jsonb hold no NUL, and only valid Unicode (no lone surrogate)."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{what} contains NUL (\\u0000), which PostgreSQL cannot store"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"{what} contains a lone surrogate (\\u{ord(value[exc.start]):04x}), "
                    "which is not valid Unicode")
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            reason = unstorable(key, f"a key of {what}") or unstorable(item, what)
            if reason:
                return reason
    elif isinstance(value, list):
        for item in value:
            reason = unstorable(item, what)
            if reason:
                return reason
    return None


def _jsonl(path: Path, text: str, problems: list[LoadProblem]
           ) -> Iterator[tuple[str, dict, int]]:
    # lines end at \n only: str.splitlines would also split at U+2028, U+0085 and other
    # characters a JSON string may hold as they are
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line, parse_constant=_refuse_constant)
        except _NotStorable as exc:
            problems.append(LoadProblem(str(path), number, str(exc)))
            continue
        except json.JSONDecodeError as exc:
            problems.append(LoadProblem(str(path), number, f"invalid JSON: {exc.msg}"))
            continue
        except ValueError as exc:  # an integer of more digits than Python reads
            problems.append(LoadProblem(str(path), number, f"invalid JSON: {exc}"))
            continue
        if isinstance(item, str):
            item = {"content": item}
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            problems.append(LoadProblem(str(path), number,
                                        'expected an object with a string "content"'))
            continue
        metadata = item.get("metadata", {})
        if not isinstance(metadata, dict):
            problems.append(LoadProblem(str(path), number, '"metadata" must be an object'))
            continue
        reason = unstorable(item["content"], '"content"') or unstorable(metadata, '"metadata"')
        if reason:
            problems.append(LoadProblem(str(path), number, reason))
            continue
        yield item["content"], metadata, number


def _markdown_sections(text: str) -> Iterator[str]:
    starts = [m.start() for m in _HEADING.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        section = text[begin:end].strip()
        if section:
            yield section


def insert_batch(conn: psycopg.Connection, batch: list[tuple[str, dict]],
                 problems: list[LoadProblem] | None = None,
                 places: Sequence[tuple[str, int | None]] | None = None) -> int:
    """Insert a batch in one transaction; the number inserted. With ``problems``, a batch
    PostgreSQL refuses for its data is inserted doc by doc instead, and each refused doc is
    reported at its place (``places[i]``: file and line) rather than failing the others."""
    try:
        return _insert(conn, batch)
    except psycopg.DataError:
        if problems is None:
            raise
    inserted = 0
    for i, doc in enumerate(batch):
        try:
            inserted += _insert(conn, [doc])
        except psycopg.DataError as exc:
            source, line = places[i] if places else ("batch", None)
            logger.warning("%s:%s refused by PostgreSQL: %s", source, line, exc)
            problems.append(LoadProblem(source, line,
                                        f"refused by PostgreSQL: {str(exc).splitlines()[0]}"))
    return inserted


def _insert(conn: psycopg.Connection, batch: list[tuple[str, dict]]) -> int:
    with conn.transaction():
        cur = conn.execute(schema.query("insert_docs"), {
            "contents": [c for c, _ in batch], "metadata": [Jsonb(m) for _, m in batch]})
    return cur.rowcount
