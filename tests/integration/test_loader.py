"""``pgfleet load``'s loader against the real database: lines PostgreSQL cannot store are
reported one by one and every other line is loaded."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgfleet.embedding.loader import LoadProblem, insert_batch, read_docs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_lines_postgresql_rejects_are_reported_and_every_other_line_is_loaded(scratch,
                                                                              tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"content": f"good {i}", "metadata": {"n": i}}) for i in range(10)]
    lines[2] = '{"content": "a\\u0000b"}'
    lines[5] = '{"content": "\\ud800"}'
    lines[7] = '{"content": "fine", "metadata": {"note": "\\u0000"}}'
    lines[8] = '{"content": "fine", "metadata": {"note": "\\udc00"}}'
    path.write_text("\n".join(lines) + "\n", "utf-8")
    problems: list[LoadProblem] = []
    inserted = insert_batch(scratch, list(read_docs(path, problems)))
    assert inserted == 6
    assert [p.line for p in problems] == [3, 6, 8, 9]
    stored = [r[0] for r in scratch.execute("SELECT content FROM docs ORDER BY id")]
    assert stored == [f"good {i}" for i in (0, 1, 3, 4, 6, 9)]


def test_a_batch_postgresql_refuses_is_inserted_doc_by_doc_and_the_refused_one_reported(
        scratch):
    problems: list[LoadProblem] = []
    batch = [("one", {}), ("t\x00wo", {}), ("three", {"k": "v"})]
    places = [("f.jsonl", 1), ("f.jsonl", 2), ("f.jsonl", 3)]
    assert insert_batch(scratch, batch, problems, places) == 2
    [problem] = problems
    assert (problem.source, problem.line) == ("f.jsonl", 2)
    assert "refused by PostgreSQL" in problem.message and "NUL" in problem.message
    assert [r[0] for r in scratch.execute("SELECT content FROM docs ORDER BY id")] == \
        ["one", "three"]
    with pytest.raises(psycopg.DataError):  # without somewhere to report, the batch fails
        insert_batch(scratch, [("t\x00wo", {})])
