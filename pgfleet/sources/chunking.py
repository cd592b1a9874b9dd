"""A row's text cut into chunks that each fit the model's window, so that nothing past the
window is cut away.

* ``tokens``: windows of at most ``chunk_tokens`` of the model's own tokens, cut where the
  text has its strongest boundary nearby (blank lines, then lines, then sentences, then
  words) and overlapping by ``overlap`` tokens: semchunk's algorithm, with its offsets;
* ``markdown``: the text split at its headings first (found by markdown-it-py, a CommonMark
  parser, so a ``#`` in a code fence is no heading), each section then cut as ``tokens``; every
  chunk keeps its section's heading path (``Install > From source``), which is embedded with
  it as context;
* ``none``: the whole text as one chunk, which the model truncates at its window (the old
  behaviour, kept for short texts and as the baseline of the retrieval benchmark).

A chunk's ``text`` is a slice of the row's text (``text[start:end]``); what the model reads is
``embedded``: the heading path, a blank line, then the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

CHUNKINGS = ("markdown", "tokens", "none")
#: a heading path takes at most this share of the window; a longer one is cut
MAX_HEADING_SHARE = 0.25
HEADING_SEPARATOR = " > "

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int
    heading: str = ""

    @property
    def embedded(self) -> str:
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


@dataclass(frozen=True)
class Section:
    start: int
    end: int
    heading: str


class Chunker:
    """Cuts texts for one source and one model: ``count`` gives a text's tokens in that
    model's tokenizer, without special tokens; ``window`` is how many such tokens the model
    reads (its window less its special tokens)."""

    def __init__(self, chunking: str, *, count: TokenCounter, window: int,
                 chunk_tokens: int, overlap: int):
        if chunking not in CHUNKINGS:
            raise ValueError(f"unknown chunking {chunking!r}; known: {', '.join(CHUNKINGS)}")
        if not 0 <= overlap < chunk_tokens:
            raise ValueError(f"overlap ({overlap}) must be at least 0 and less than the chunk "
                             f"size ({chunk_tokens})")
        self.chunking = chunking
        self.count = count
        self.window = window
        self.chunk_tokens = min(chunk_tokens, window)
        self.overlap = min(overlap, self.chunk_tokens - 1)

    def chunks(self, text: str) -> list[Chunk]:
        """The chunks of one text, in order; none for a blank text."""
        if not text.strip():
            return []
        if self.chunking == "none":
            return [Chunk(0, text, 0, len(text))]
        sections = (markdown_sections(text) if self.chunking == "markdown"
                    else [Section(0, len(text), "")])
        out: list[Chunk] = []
        for section in sections:
            body = text[section.start:section.end]
            if not body.strip():
                continue
            heading = self._fitting_heading(section.heading)
            size = self.chunk_tokens - (self.count(heading) if heading else 0)
            for piece, (start, _end) in self._split(body, max(size, 8)):
                # no chunk starts or ends in blanks: its offsets move with the trim
                lead = len(piece) - len(piece.lstrip())
                piece = piece.strip()
                if not piece:
                    continue
                start += lead
                out.append(Chunk(len(out), piece, section.start + start,
                                 section.start + start + len(piece), heading))
        if not out:  # headings only: the text as it is
            start = len(text) - len(text.lstrip())
            return [Chunk(0, text.strip(), start, start + len(text.strip()))]
        return out

    def _split(self, text: str, size: int) -> list[tuple[str, tuple[int, int]]]:
        chunker = _semchunker(self.count, size)
        overlap = min(self.overlap, size - 1) or None
        pieces, offsets = chunker(text, offsets=True, overlap=overlap)
        return list(zip(pieces, offsets, strict=True))

    def _fitting_heading(self, heading: str) -> str:
        if not heading:
            return heading
        limit = int(self.window * MAX_HEADING_SHARE)
        while heading and self.count(heading) > limit:
            parts = heading.split(HEADING_SEPARATOR)
            # drop the outermost heading first; a single over-long heading is cut
            heading = (HEADING_SEPARATOR.join(parts[1:]) if len(parts) > 1
                       else heading[: len(heading) * 2 // 3])
        return heading


@lru_cache(maxsize=64)
def _semchunker(count: TokenCounter, size: int):
    import semchunk

    return semchunk.chunkerify(count, size)


def markdown_sections(text: str) -> list[Section]:
    """The text's sections, each from the end of its heading's line to the next heading, with
    the path of headings it falls under. Text before the first heading is a section with no
    heading."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    line_starts = [0]
    for i, char in enumerate(text):
        if char == "\n":
            line_starts.append(i + 1)

    def offset(line: int) -> int:
        return line_starts[line] if line < len(line_starts) else len(text)

    headings: list[tuple[int, int, int, str]] = []  # level, start, end of heading, title
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None:
            title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
            headings.append((int(token.tag[1:]), offset(token.map[0]), offset(token.map[1]),
                             title))
    sections: list[Section] = []
    first = headings[0][1] if headings else len(text)
    if first > 0:
        sections.append(Section(0, first, ""))
    path: list[tuple[int, str]] = []
    for n, (level, _start, body_start, title) in enumerate(headings):
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        end = headings[n + 1][1] if n + 1 < len(headings) else len(text)
        sections.append(Section(body_start, end,
                                HEADING_SEPARATOR.join(t for _, t in path if t)))
    return sections
