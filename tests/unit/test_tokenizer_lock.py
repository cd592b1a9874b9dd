"""The engines' tokenizer is used by one thread at a time: a fast tokenizer keeps padding and
truncation as state that each call sets, so a token count in one thread (padding off) in the
middle of a pass's tokenization in another (padding on) would hand that pass the wrong
settings. A fake tokenizer with that state, slow enough that unguarded calls overlap."""

from __future__ import annotations

import threading
import time

from pgfleet.embedding.engines.base import BudgetedEncoder


class StatefulTokenizer:
    """Sets its padding from each call, as transformers does, and checks it is unchanged when
    the call ends."""

    def __init__(self) -> None:
        self.padding: bool | None = None
        self.clashes = 0

    def __call__(self, texts: list[str], **kwargs: object) -> dict[str, list[list[int]]]:
        wanted = bool(kwargs.get("padding", False))
        self.padding = wanted
        time.sleep(0.001)  # the encode, during which another thread could set its own
        if self.padding != wanted:
            self.clashes += 1
        return {"input_ids": [[0] * len(t.split()) for t in texts]}


class Engine(BudgetedEncoder):
    dimensions, max_seq_length, token_budget = 4, 16, 64

    def __init__(self) -> None:
        self.tokenizer = StatefulTokenizer()


def test_counting_tokens_and_tokenizing_a_pass_never_interleave():
    engine = Engine()

    def counts() -> None:
        for _ in range(100):
            assert engine.token_counts(["a b c", "d"]) == [3, 1]

    def passes() -> None:
        for _ in range(100):
            engine.tokenize(["a b c", "d"], padding=True)

    threads = [threading.Thread(target=f) for f in (counts, passes, counts, passes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.tokenizer.clashes == 0


def test_each_engine_has_one_lock_of_its_own():
    first, second = Engine(), Engine()
    assert first.tokenizer_lock is first.tokenizer_lock
    assert first.tokenizer_lock is not second.tokenizer_lock
