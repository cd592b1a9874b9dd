"""``pgfleet load``: text, markdown and JSONL files into ``docs``, in batches.

* ``.jsonl``: one object per line with ``content`` (required, a string) and ``metadata``
  (optional, an object); a bad line is reported with its number and skipped.
* ``.md``: one doc per section (a heading with the text under it).
* anything else is read as text: one doc per paragraph (blocks separated by blank lines).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

import schema

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
    suffix = path.suffix.lower()
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(LoadProblem(str(path), None, f"not UTF-8 text ({exc.reason})"))
        return
    if "\x00" in text:
        # PostgreSQL text cannot hold NUL
        text = text.replace("\x00", "")
        problems.append(LoadProblem(str(path), None, "NUL characters removed"))
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path, text, problems)
    elif suffix in (".md", ".markdown"):
        for i, section in enumerate(_markdown_sections(text)):
            yield section, {"source": str(path), "section": i}
    else:
        for i, para in enumerate(p.strip() for p in re.split(r"\n\s*\n", text)):
            if para:
                yield para, {"source": str(path), "paragraph": i}


def _jsonl(path: Path, text: str, problems: list[LoadProblem]) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(LoadProblem(str(path), number, f"invalid JSON: {exc.msg}"))
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
        yield item["content"], metadata


def _markdown_sections(text: str) -> Iterator[str]:
    starts = [m.start() for m in _HEADING.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        section = text[begin:end].strip()
        if section:
            yield section


def insert_batch(conn: psycopg.Connection, batch: list[tuple[str, dict]]) -> int:
    with conn.transaction():
        cur = conn.execute(schema.query("insert_docs"), {
            "contents": [c for c, _ in batch], "metadata": [Jsonb(m) for _, m in batch]})
    return cur.rowcount
