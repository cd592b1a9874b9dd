"""``pgfleet verify``: check that every doc has exactly the right vectors.

For each active embedding version: no doc without a current vector unless it is pending or
recorded as failed; no vector computed from old content unless a newer job is pending; no
vector for a deleted doc; no duplicate; failures only on docs with nothing to embed (other
failures are reported, to be looked at, not hidden).
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgfleet import db

PROBLEMS = ("missing", "stale", "orphaned", "duplicated")


def verify(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = db.fetch_all(conn, "verify")
    return [{k: (int(v) if isinstance(v, int) else v) for k, v in r.items()} for r in rows]


def consistent(report: list[dict[str, Any]], *, settled: bool = True) -> bool:
    """True when nothing is wrong; with ``settled``, also nothing is pending."""
    return all(r[p] == 0 for r in report for p in PROBLEMS) and (
        not settled or all(r["pending"] == 0 for r in report))
