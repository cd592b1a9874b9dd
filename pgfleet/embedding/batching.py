"""Pure decisions of the embedding path: message validation, batch planning, backoff.

Nothing here touches a database, a broker or a model, so all of it is tested without fixtures.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgfleet.errors import InvalidTaskArguments

#: more ids than this in one message is refused: messages carry ids, but not unbounded lists
MAX_IDS_PER_MESSAGE = 10_000

#: the most characters one token of a model's window is taken to cover: WordPiece gives every
#: word of up to 100 characters (its max_input_chars_per_word) at least one token per 100
#: characters, and a longer word one [UNK]. A doc is cut at fetch time to this many
#: characters per token of the window (from its first non-blank character), so that memory
#: stays bounded whatever a row holds; text with long runs of blanks or controls between its
#: words, or of words over 100 characters, can reach the cut before the window is full, and
#: the worker logs those.
MAX_CHARS_PER_TOKEN = 100

#: the window assumed for a version that records none (the largest of the BERT family)
DEFAULT_WINDOW_TOKENS = 512


def max_chars(window_tokens: int | None) -> int:
    """Characters of a doc fetched for a model that reads ``window_tokens`` tokens."""
    return MAX_CHARS_PER_TOKEN * (window_tokens or DEFAULT_WINDOW_TOKENS)


def validate_embed_args(args: Sequence[Any], kwargs: dict[str, Any] | None = None,
                        ) -> tuple[int, list[int]]:
    """``(version_id, doc_ids)`` from an embed message, or InvalidTaskArguments saying why."""
    kwargs = kwargs or {}
    if kwargs and args:
        raise InvalidTaskArguments("pass version_id and doc_ids either by position or by name")
    if kwargs:
        unknown = set(kwargs) - {"version_id", "doc_ids"}
        if unknown:
            raise InvalidTaskArguments(f"unknown arguments: {sorted(unknown)}")
        args = (kwargs.get("version_id"), kwargs.get("doc_ids"))
    if len(args) != 2:
        raise InvalidTaskArguments(
            f"expected (version_id, doc_ids), got {len(args)} positional arguments")
    version_id, doc_ids = args
    if not _is_int(version_id) or version_id < 1:
        raise InvalidTaskArguments(f"version_id must be a positive integer, got {version_id!r}")
    if not isinstance(doc_ids, list | tuple):
        raise InvalidTaskArguments(f"doc_ids must be a list of integers, got {type(doc_ids).__name__}")
    if len(doc_ids) > MAX_IDS_PER_MESSAGE:
        raise InvalidTaskArguments(
            f"{len(doc_ids)} doc ids in one message; at most {MAX_IDS_PER_MESSAGE}")
    bad = [d for d in doc_ids if not _is_int(d) or d < 1 or d >= 2**63]
    if bad:
        raise InvalidTaskArguments(f"doc_ids must be positive 64-bit integers, got {bad[:5]!r}")
    return int(version_id), [int(d) for d in doc_ids]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chunked(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


@dataclass
class BatchPlan:
    """What to do with one batch of fetched rows."""

    #: doc_id -> (hash, vector) served from the cache
    hits: dict[int, tuple[bytes, np.ndarray]] = field(default_factory=dict)
    #: hash -> number of docs in this batch served by that cache row
    hit_counts: dict[bytes, int] = field(default_factory=dict)
    #: texts to encode, one per distinct content, shortest first
    texts: list[str] = field(default_factory=list)
    #: hash of each text in ``texts``
    text_hashes: list[bytes] = field(default_factory=list)
    #: hash -> docs with that content
    docs_by_hash: dict[bytes, list[int]] = field(default_factory=dict)
    #: (doc_id, hash) of docs with nothing to embed
    empty: list[tuple[int, bytes]] = field(default_factory=list)
    #: hashes of the texts that were cut at fetch time (see ``MAX_CHARS_PER_TOKEN``)
    cut: set[bytes] = field(default_factory=set)

    @property
    def batch_size(self) -> int:
        return len(self.hits) + sum(len(d) for d in self.docs_by_hash.values()) + len(self.empty)


def plan_batch(rows: Iterable[dict[str, Any]]) -> BatchPlan:
    """Split fetched rows into empty docs, cache hits and distinct texts to encode.

    Each row has ``doc_id``, ``hash``, ``blank`` (decided by the database, with the one
    definition ``verify`` uses too: ``pgfleet_is_blank_v1``), ``content`` (None on a cache
    hit), ``cached`` and optionally ``cut``.
    """
    plan = BatchPlan()
    pending_texts: dict[bytes, str] = {}
    for row in rows:
        doc_id, digest = row["doc_id"], bytes(row["hash"])
        if row["blank"]:
            plan.empty.append((doc_id, digest))
            continue
        if row["cached"] is not None:
            plan.hits[doc_id] = (digest, as_array(row["cached"]))
            plan.hit_counts[digest] = plan.hit_counts.get(digest, 0) + 1
            continue
        plan.docs_by_hash.setdefault(digest, []).append(doc_id)
        pending_texts.setdefault(digest, row["content"])
        if row.get("cut"):
            plan.cut.add(digest)
    for digest, text in sorted(pending_texts.items(), key=lambda item: len(item[1])):
        plan.texts.append(text)
        plan.text_hashes.append(digest)
    return plan


def token_budget_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped for forward passes: shortest first, each group as large as fits
    ``len(group) * longest_in_group <= budget`` (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # sorted ascending, so this text is the longest of the group it joins
        if current and (len(current) + 1) * max(1, lengths[index]) > budget:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def as_array(vector: Any) -> np.ndarray:
    """A float32 array from a pgvector ``Vector`` or anything array-like."""
    to_numpy = getattr(vector, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)


def backoff_s(attempt: int, *, base_s: float, max_s: float,
              rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter for the given attempt (1-based)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)
