"""Chunking (pgfleet.sources.chunking) with a counter whose tokens are words, and the
embed_source task's argument checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfleet.errors import InvalidTaskArguments
from pgfleet.sources.catalog import SourceError, template_fields
from pgfleet.sources.chunking import Chunker, markdown_sections


def words(text: str) -> int:
    return len(text.split())


def test_a_code_fence_hash_is_not_a_heading_and_paths_nest():
    text = "intro\n\n# A\n\none\n\n```\n# not a heading\n```\n\n## B\n\ntwo\n\n# C\n\nthree\n"
    headings = [s.heading for s in markdown_sections(text)]
    assert headings == ["", "A", "A > B", "C"]


def test_every_chunk_fits_and_is_a_slice_of_the_text():
    text = "# Title\n\n" + " ".join(f"w{i}" for i in range(500)) + "\n\n## Sub\n\nend words"
    chunker = Chunker("markdown", count=words, window=60, chunk_tokens=40, overlap=5)
    chunks = chunker.chunks(text)
    assert len(chunks) > 10
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert words(chunk.embedded) <= 40
    assert chunks[-1].heading == "Title > Sub" and chunks[-1].text == "end words"
    assert "w499" in " ".join(c.text for c in chunks)   # nothing cut away


def test_none_keeps_the_text_whole_and_a_blank_text_has_no_chunks():
    chunker = Chunker("none", count=words, window=10, chunk_tokens=16, overlap=0)
    assert [c.text for c in chunker.chunks("a b c")] == ["a b c"]
    assert chunker.chunks("  \n ") == []


def test_a_long_heading_path_is_cut_to_leave_room_for_the_text():
    text = "# " + " ".join(["long"] * 50) + "\n\nbody text here"
    chunker = Chunker("markdown", count=words, window=40, chunk_tokens=40, overlap=0)
    [chunk] = chunker.chunks(text)
    assert words(chunk.heading) <= 10 and chunk.text == "body text here"


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab #\n`"), max_size=400))
def test_any_text_chunks_into_slices_that_fit(text):
    chunker = Chunker("markdown", count=words, window=20, chunk_tokens=12, overlap=3)
    for chunk in chunker.chunks(text):
        assert text[chunk.start:chunk.end] == chunk.text
        assert words(chunk.embedded) <= 12 or chunk.text == text.strip()


@pytest.mark.parametrize("template, fields", [
    ("{title}: {body}", ["title", "body"]), ("{{literal}} {x}", ["x"])])
def test_template_fields(template, fields):
    assert template_fields(template) == fields


@pytest.mark.parametrize("template", ["{x!r}", "{x:>10}", "{}", "plain", "{x", "}"])
def test_templates_that_are_not_plain_fields_are_refused(template):
    with pytest.raises(SourceError):
        template_fields(template)


@pytest.mark.parametrize("args", [
    (0, 1, ["k"]), ("1", 1, ["k"]), (1, True, ["k"]), (1, 1, []), (1, 1, "k"),
    (1, 1, [1]), (1, 1, ["x" * 1001]), (1, 1, ["k"] * 10_001)])
def test_embed_source_refuses_malformed_arguments(args):
    from workers.tasks.embed_source import validate_source_args

    with pytest.raises(InvalidTaskArguments):
        validate_source_args(*args)

