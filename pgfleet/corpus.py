"""Sample docs for the demo, and real text (re-exported from :mod:`workers.corpus`)."""

from __future__ import annotations

import json
from importlib import resources

from workers.corpus import short_rows, stdlib_paragraphs

__all__ = ["sample_docs", "short_rows", "stdlib_paragraphs"]


def sample_docs() -> list[dict]:
    """The small hand-written sample shipped with pgfleet (content + metadata)."""
    text = resources.files("pgfleet").joinpath("data/sample_docs.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
