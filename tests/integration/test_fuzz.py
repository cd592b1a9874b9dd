"""Fuzzing the text path against the real worker: arbitrary Unicode, control characters next
to where NUL would be, 1 MB strings and empty strings. Nothing may crash the worker; every
doc ends embedded, or recorded as empty."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

# PostgreSQL text cannot hold NUL (the loader strips it), and surrogates are not UTF-8
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
               max_size=400)
CONTROL = st.text(st.characters(min_codepoint=1, max_codepoint=0x1f) | st.sampled_from(
    "\x7f\u200b\u200e\u202e\ufeff\u0301 a"), min_size=1, max_size=50)


def _settle(conn, ids, timeout_s=120.0):
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM pending_embeddings WHERE doc_id = ANY(%s)", (ids,)
    ).fetchone()[0] == 0, timeout_s, interval_s=0.1, message="fuzzed docs settled")


def _check(conn, ids, texts, worker):
    embedded = {r[0] for r in conn.execute(
        "SELECT doc_id FROM embeddings WHERE doc_id = ANY(%s)", (ids,))}
    failed = dict(conn.execute(
        "SELECT doc_id, reason FROM embedding_failures WHERE doc_id = ANY(%s)", (ids,)).fetchall())
    for doc_id, text in zip(ids, texts, strict=True):
        if text.strip():
            assert doc_id in embedded, (doc_id, repr(text[:80]), failed.get(doc_id))
        else:
            assert failed.get(doc_id) == "empty content", (doc_id, repr(text))
    assert worker.process.poll() is None, "the worker died"


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(texts=st.lists(TEXT | CONTROL, min_size=40, max_size=40))
def test_arbitrary_text_never_crashes_a_worker(fleet, clean, texts):
    ids = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (texts,))]
    _settle(clean, ids)
    _check(clean, ids, texts, fleet.worker)


def test_huge_and_empty_strings(fleet, clean):
    texts = ["", " ", "\t\n\r\x0b\x0c", "x" * 1_000_000,
             ("lorem ipsum \u00e9\u0301 " * 80_000)[:1_000_000], "short and fine"]
    ids = [r[0] for r in clean.execute(
        "INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id", (texts,))]
    _settle(clean, ids, timeout_s=180)
    _check(clean, ids, texts, fleet.worker)
