"""Reading users' record files (CSV, JSONL) with every bad row reported by its line.

Shared by the training-pair and text-to-SQL example loaders: each yields ``(line, item)``
where ``item`` is a dict of the row's fields or a :class:`Problem` saying why the row is bad.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgfleet.errors import PgfleetError


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_text(path: Path, suffixes: Sequence[str], kinds: str) -> str:
    """The file's text, or one clear error (wrong kind of file, not UTF-8, unreadable);
    ``kinds`` says what is expected (e.g. "a .csv or .jsonl file")."""
    if path.suffix.lower() not in suffixes:
        raise PgfleetError(f"{path}: expected {kinds}")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise PgfleetError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise PgfleetError(f"{path}: cannot read it ({exc.strerror})") from exc


def jsonl_items(text: str, expected: str) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """One JSON object per non-empty line; ``expected`` names its fields in the message."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, Problem(number, f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(item, dict):
            yield number, Problem(number, f"expected a JSON object with {expected}")
            continue
        yield number, item


def csv_items(text: str, *, required: Sequence[str], optional: Sequence[str], expected: str,
              delimiter: str = ",") -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    """Rows of a CSV file with a header naming ``required`` (and maybe ``optional``) columns;
    empty optional values are left out, blank rows skipped."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        yield 1, Problem(1, f"malformed CSV header ({exc})")
        return
    missing = [name for name in required if name not in header]
    unknown = sorted(set(header) - set(required) - set(optional))
    if missing or unknown:
        details = []
        if missing:
            details.append(f"missing {sorted(missing)}")
        if unknown:
            details.append(f"unknown {unknown}")
        detail = "; ".join(details)
        yield 1, Problem(1, f"the header must name {expected}; {detail}")
        return
    try:
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            if None in row:
                yield reader.line_num, Problem(reader.line_num, "more fields than the header")
                continue
            item = {k: v for k, v in row.items() if not (k in optional and v in ("", None))}
            yield reader.line_num, item
    except csv.Error as exc:
        yield reader.line_num, Problem(reader.line_num, f"malformed CSV ({exc})")
