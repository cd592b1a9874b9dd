"""Text for demos and benchmarks, available offline on any machine with Python.

``sample_docs`` is the small hand-written sample shipped with pgfleet. ``stdlib_paragraphs``
reads the docstrings of the Python standard library's own source files, then of the installed
packages (parsed with :mod:`ast`, never imported), and returns documentation paragraphs of
realistic length: 40-180 words, about 50-250 model tokens, in a fixed order.
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

_SPACE = re.compile(r"\s+")


def stdlib_paragraphs(limit: int, *, min_words: int = 40, max_words: int = 180) -> list[str]:
    """Up to ``limit`` distinct documentation paragraphs of ``min_words``-``max_words`` words."""
    seen: set[str] = set()
    out: list[str] = []
    for paragraph in _paragraphs(min_words, max_words):
        if paragraph in seen:
            continue
        seen.add(paragraph)
        out.append(paragraph)
        if len(out) >= limit:
            break
    return out


def short_rows(limit: int) -> list[str]:
    """Up to ``limit`` distinct short texts (first sentences of docstrings, 4-24 words)."""
    seen: set[str] = set()
    out: list[str] = []
    for doc in _docstrings():
        sentence = _SPACE.sub(" ", doc.split("\n\n")[0]).strip()
        sentence = sentence.split(". ")[0].rstrip(".")
        words = len(sentence.split())
        if 4 <= words <= 24 and sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
            if len(out) >= limit:
                break
    return out


def _docstrings() -> Iterator[str]:
    paths = sysconfig.get_paths()
    for root in (Path(paths["stdlib"]), Path(paths["purelib"])):
        yield from _docstrings_under(root)


def _docstrings_under(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"}
               for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def _paragraphs(min_words: int, max_words: int) -> Iterator[str]:
    for doc in _docstrings():
        current: list[str] = []
        for block in doc.split("\n\n"):
            text = _SPACE.sub(" ", block).strip()
            if not text or text.startswith(">>>"):
                continue
            current.append(text)
            words = sum(len(t.split()) for t in current)
            if words >= min_words:
                if words <= max_words:
                    yield " ".join(current)
                current = []


def sample_docs() -> list[dict]:
    """The small hand-written sample shipped with pgfleet (content + metadata)."""
    text = resources.files("pgfleet").joinpath("data/sample_docs.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def markdown_pages(limit: int, *, min_words: int = 600) -> list[dict[str, str]]:
    """Up to ``limit`` whole Markdown pages: the descriptions (READMEs) of the installed
    packages whose metadata says ``text/markdown``, at least ``min_words`` words each, with
    the package's name and its one-line summary; distinct, in name order."""
    import email

    seen: set[str] = set()
    pages: list[dict[str, str]] = []
    roots = {Path(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    for path in sorted(p for root in roots for p in root.glob("*.dist-info/METADATA")):
        try:
            message = email.message_from_string(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        kind = (message.get("Description-Content-Type") or "").lower()
        body = message.get_payload()
        if "markdown" not in kind or not isinstance(body, str):
            continue
        body = body.strip()
        if len(body.split()) < min_words or body in seen:
            continue
        seen.add(body)
        pages.append({"name": str(message.get("Name") or path.parent.name),
                      "summary": str(message.get("Summary") or ""), "body": body})
        if len(pages) >= limit:
            break
    return pages
