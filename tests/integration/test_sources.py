"""Sources: a user's table embedded chunk by chunk, with the guarantees docs have.

The catalog checks, the triggers and the pipeline run against the real database (the
scratch one, which no worker consumes), the pipeline in-process with a fake engine whose
tokens are words; tests/e2e and the fleet tests run the real model and worker."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from pgfleet import db
from pgfleet.embedding.pipeline import EmbedPipeline
from pgfleet.settings import Settings
from pgfleet.sources import catalog
from pgfleet.sources.catalog import SourceError, SourceSpec
from pgfleet.sources.pipeline import SourcePipeline
from pgfleet.sources.search import search_source
from pgfleet.testing import FakeEngine

pytestmark = pytest.mark.integration

LONG = "\n\n".join([
    "# Installing",
    " ".join(f"install{i}" for i in range(150)),
    "## From source",
    " ".join(f"build{i}" for i in range(150)),
    "# Usage",
    "Run the fleet with pgfleet up and watch the vectors arrive.",
])


@pytest.fixture
def db_(scratch):
    """The scratch database with no sources and a fresh user table ``articles``."""
    for source in catalog.list_sources(scratch):
        catalog.drop(scratch, source.name)
    scratch.execute("DROP TABLE IF EXISTS articles, pairs, plain, gadgets CASCADE")
    scratch.execute("CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text, "
                    "views integer NOT NULL DEFAULT 0)")
    return scratch


@pytest.fixture
def make_pipeline(scratch_url):
    pools = []

    def make(**engine_kwargs) -> SourcePipeline:
        pool = db.open_pool(scratch_url, min_size=1, max_size=2, name="pgfleet-test")
        pools.append(pool)
        engines: dict[int, FakeEngine] = {}

        def load(spec):
            return engines.setdefault(spec.version_id, FakeEngine(spec, **engine_kwargs))

        settings = Settings(max_attempts=2, retry_base_s=0.0, retry_max_s=0.0)
        embed = EmbedPipeline(pool, settings, load, name="test", sleep=lambda s: None)
        pipeline = SourcePipeline(pool, settings, spec=embed.spec, engine=embed.engine,
                                  name="test", sleep=lambda s: None)
        pipeline.engines = engines  # type: ignore[attr-defined]
        return pipeline

    yield make
    for pool in pools:
        pool.close()


def add(conn, **kwargs):
    spec = SourceSpec(**{"name": "articles", "table": "articles",
                         "columns": ["title", "body"], **kwargs})
    return catalog.add(conn, spec)


def pending(conn, source_id: int) -> dict[str, int]:
    """The source's pending rows, once the change log is taken (as the producer does)."""
    catalog.take_all_changes(conn)
    return dict(conn.execute("SELECT row_key, priority FROM source_pending WHERE source_id = %s",
                             (source_id,)).fetchall())


def chunks(conn, source_id: int, key: str) -> list[tuple]:
    return conn.execute("SELECT chunk, content, heading, start_offset, end_offset "
                        "FROM source_chunks WHERE source_id = %s AND row_key = %s "
                        "ORDER BY chunk", (source_id, key)).fetchall()


def hnsw_indexes(conn, source_id: int) -> dict[str, str]:
    """The source's HNSW indexes: name -> definition."""
    return dict(conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'source_chunks' "
        "AND indexname LIKE %s", (f"source\\_chunks\\_hnsw\\_s{source_id}\\_v%",)).fetchall())


def embed_all(pipeline: SourcePipeline, conn, source_id: int):
    catalog.take_all_changes(conn)
    keys = [r[0] for r in conn.execute("SELECT row_key FROM source_pending WHERE source_id = %s",
                                       (source_id,))]
    return pipeline.run(source_id, 1, keys)


# --- source add: what it checks -------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"table": "nowhere"}, "no table 'nowhere'"),
    ({"table": "articles; DROP TABLE docs"}, "no table"),
    ({"table": "source_chunks"}, "one of the fleet's own tables"),
    ({"table": "pg_class"}, "system catalogs"),
    ({"columns": ["title", "missing"]}, "has no column 'missing'"),
    ({"columns": ["views"]}, "views (integer): not text; give --template"),
    ({"columns": ["title"], "template": "{title} {views}"}, "--template names 'views'"),
    ({"template": "{title!r}"}, "is not a field"),
    ({"template": "no fields"}, "names no column"),
    ({"template": "{title"}, "--template"),
    ({"name": "docs"}, "built-in source"),
    ({"name": "Bad-Name"}, "lowercase letters"),
    ({"key": "title"}, "primary key is 'id'"),
    ({"model": "no-such-model"}, "no embedding model"),
    ({"text_config": "klingon"}, "no text search configuration"),
    ({"text_config": "english'; --"}, "no text search configuration"),
    ({"chunk_tokens": 8}, "--chunk-tokens 8"),
    ({"overlap": 500}, "--overlap 500"),
    ({"chunking": "sentences"}, "--chunking 'sentences'"),
])
def test_a_source_that_cannot_work_is_refused_with_why(db_, change, message):
    with pytest.raises(SourceError, match=None) as caught:
        add(db_, **change)
    assert message in str(caught.value)
    assert catalog.list_sources(db_) == []
    # nothing was created on the table
    assert db_.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'articles'::regclass"
                       ).fetchone()[0] == 0


def test_keys_a_source_cannot_use_are_refused(db_):
    db_.execute("CREATE TABLE pairs (a int, b int, body text, PRIMARY KEY (a, b))")
    db_.execute("CREATE TABLE plain (body text)")
    db_.execute("CREATE TABLE gadgets (id numeric PRIMARY KEY, body text)")
    for table, message in [("pairs", "primary key has 2 columns"),
                           ("plain", "has no primary key"),
                           ("gadgets", "of type numeric")]:
        with pytest.raises(SourceError) as caught:
            catalog.add(db_, SourceSpec(name=table, table=table, columns=["body"]))
        assert message in str(caught.value)


def test_a_name_is_taken_once(db_):
    add(db_)
    with pytest.raises(SourceError, match="exists already"):
        add(db_)


def test_missing_rights_on_the_table_are_named(db_):
    db_.execute("DROP ROLE IF EXISTS source_tester")
    db_.execute("CREATE ROLE source_tester")
    db_.execute("GRANT USAGE ON SCHEMA public TO source_tester")
    db_.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO source_tester")
    db_.execute("GRANT INSERT ON sources TO source_tester")
    try:
        db_.execute("SET ROLE source_tester")
        with pytest.raises(SourceError) as caught:
            add(db_)
        assert "lacks TRIGGER on public.articles" in str(caught.value)
        assert "GRANT SELECT, TRIGGER ON public.articles TO source_tester" in str(caught.value)
    finally:
        db_.execute("RESET ROLE")
        db_.execute("DROP OWNED BY source_tester")
        db_.execute("DROP ROLE source_tester")


# --- the triggers ---------------------------------------------------------------------

def test_existing_rows_are_backfilled_behind_live_changes(db_):
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'old', 'row'), (2, 'b', 'c')")
    source, queued = add(db_)
    assert queued == 2
    db_.execute("INSERT INTO articles (id, title, body) VALUES (3, 'new', 'row')")
    assert pending(db_, source.id) == {"1": 1, "2": 1, "3": 0}


def test_only_a_change_of_the_embedded_text_queues_a_row(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'title', 'body')")
    embed_all(make_pipeline(), db_, source.id)
    assert pending(db_, source.id) == {}
    db_.execute("UPDATE articles SET views = views + 1")           # not a source column
    db_.execute("UPDATE articles SET title = title")               # no change
    assert pending(db_, source.id) == {}
    db_.execute("UPDATE articles SET body = 'new body' WHERE id = 1")
    assert pending(db_, source.id) == {"1": 0}


def test_a_delete_a_truncate_and_a_new_key_leave_nothing_behind(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b'), (2, 'c', 'd'), "
                "(3, 'e', 'f')")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    db_.execute("DELETE FROM articles WHERE id = 1")
    db_.execute("UPDATE articles SET id = 20 WHERE id = 2")
    keys = {r[0] for r in db_.execute("SELECT DISTINCT row_key FROM source_chunks")}
    assert keys == {"3"}
    assert pending(db_, source.id) == {"20": 0}
    embed_all(run, db_, source.id)
    db_.execute("TRUNCATE articles")
    assert db_.execute("SELECT count(*) FROM source_chunks").fetchone()[0] == 0
    assert pending(db_, source.id) == {}


def change_log(conn) -> list[list[str]]:
    return [r[0] for r in conn.execute("SELECT row_keys FROM source_changes ORDER BY ctid")]


def test_a_statement_writes_only_its_keys_to_the_change_log(db_):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) "
                "SELECT g, 't', 'b' FROM generate_series(1, 2500) g")
    log = change_log(db_)
    assert sorted(len(keys) for keys in log) == [500, 1000, 1000]   # at most 1,000 a row
    assert sorted(int(k) for keys in log for k in keys) == list(range(1, 2501))
    assert db_.execute("SELECT count(*) FROM source_pending").fetchone()[0] == 0
    db_.execute("UPDATE articles SET views = 1")                  # no text changed
    assert len(change_log(db_)) == 3
    taken = catalog.take_all_changes(db_)
    assert (taken.changes, taken.keys, taken.queued) == (3, 2500, 2500)
    assert change_log(db_) == []
    assert len(pending(db_, source.id)) == 2500


def test_a_take_queues_what_still_needs_embedding_and_nothing_else(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b'), (2, 'c', 'd')")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (3, 'gone', 'soon')")
    db_.execute("DELETE FROM articles WHERE id = 3")               # before the take
    db_.execute("UPDATE articles SET body = 'x' WHERE id = 1")
    db_.execute("UPDATE articles SET body = 'b' WHERE id = 1")     # back to what is embedded
    db_.execute("UPDATE articles SET body = 'new' WHERE id = 2")
    assert pending(db_, source.id) == {"2": 0}
    # a pending row of the same text keeps its job: taking it again changes nothing
    queued_at = db_.execute("SELECT queued_at FROM source_pending").fetchone()[0]
    db_.execute("UPDATE articles SET body = 'newer' WHERE id = 2")
    db_.execute("UPDATE articles SET body = 'new' WHERE id = 2")
    assert pending(db_, source.id) == {"2": 0}
    assert db_.execute("SELECT queued_at FROM source_pending").fetchone()[0] == queued_at


def _started(run: SourcePipeline, conn, source, key: str):
    """A worker's first step on the row: its pending row started, its text read."""
    from pgfleet.sources.pipeline import SourceReport

    spec = run.spec(1)
    report = SourceReport(source.id, 1)
    [row] = run._start(source, spec, [key], report)
    return spec, row, report


def test_a_change_back_to_the_embedded_text_while_a_job_runs_is_not_lost(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'title', 'text A')")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    db_.execute("UPDATE articles SET title = '', body = ' ' WHERE id = 1")   # blank: will fail
    assert pending(db_, source.id) == {"1": 0}
    spec, row, report = _started(run, db_, source, "1")      # the worker reads the blank text
    db_.execute("UPDATE articles SET title = 'title', body = 'text A' WHERE id = 1")  # undone
    assert pending(db_, source.id) == {"1": 0}                # the started job is replaced
    run._process(source, spec, [row], report)                 # its failure matches no job now
    assert db_.execute("SELECT count(*) FROM source_failures").fetchone()[0] == 0
    embed_all(run, db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "1")] == ["title\n\ntext A"]
    assert pending(db_, source.id) == {}


def test_a_job_that_read_a_text_since_undone_does_not_write_it(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 't', 'B')")
    assert pending(db_, source.id) == {"1": 0}
    run = make_pipeline()
    db_.execute("UPDATE articles SET body = 'C' WHERE id = 1")     # not taken yet
    spec, row, report = _started(run, db_, source, "1")            # reads C
    db_.execute("UPDATE articles SET body = 'B' WHERE id = 1")     # back to the queued text
    assert pending(db_, source.id) == {"1": 0}
    run._process(source, spec, [row], report)
    assert report.written == 0 and chunks(db_, source.id, "1") == []  # C is not written
    embed_all(run, db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "1")] == ["t\n\nB"]


def test_a_live_change_lifts_a_backfilled_row_to_a_live_job(db_):
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'old', 'row')")
    source, _ = add(db_)
    assert pending(db_, source.id) == {"1": 1}
    db_.execute("UPDATE articles SET body = 'x' WHERE id = 1")
    db_.execute("UPDATE articles SET body = 'row' WHERE id = 1")   # same text as queued
    assert pending(db_, source.id) == {"1": 0}


def test_a_source_whose_take_fails_does_not_stop_the_others(db_):
    source, _ = add(db_)
    db_.execute("CREATE TABLE gadgets (id int PRIMARY KEY, body text)")
    other, _ = catalog.add(db_, SourceSpec(name="gadgets", table="gadgets", columns=["body"]))
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b')")
    db_.execute("INSERT INTO gadgets VALUES (1, 'c')")
    db_.execute(sql.SQL("ALTER VIEW {} RENAME TO broken_view").format(other.view))
    try:
        taken = catalog.take_all_changes(db_)
        assert taken.failed == ["gadgets"] and taken.queued == 1
        assert pending(db_, source.id) == {"1": 0}
    finally:
        db_.execute(sql.SQL("ALTER VIEW broken_view RENAME TO {}").format(other.view))
    assert catalog.take_all_changes(db_).queued == 1               # its changes waited


def test_takes_are_bounded_and_concurrent_takes_skip_each_other(db_, scratch_url):
    source, _ = add(db_)
    for start in range(0, 30_000, 1000):
        db_.execute("INSERT INTO articles (id, title, body) "
                    "SELECT g, 't', 'b' FROM generate_series(%s::int, %s::int) g",
                    (start + 1, start + 1000))
    assert len(change_log(db_)) == 30
    with psycopg.connect(scratch_url) as other:
        other.execute("SELECT 1")       # a transaction open around the take: it holds on
        held = catalog.take_changes(other, source)
        assert held.keys == catalog.TAKE_MAX_KEYS
        # another take skips what the first one holds: it does not wait, takes nothing twice
        db_.execute("SET lock_timeout = '5s'")
        try:
            assert catalog.take_changes(db_, source).keys == 0
        finally:
            db_.execute("RESET lock_timeout")
        other.rollback()                                      # a producer that died: nothing lost
    rest = catalog.take_all_changes(db_)
    assert rest.keys == 30_000 and rest.changes == 30
    assert len(pending(db_, source.id)) == 30_000


def test_with_always_rows_arriving_by_replication_are_queued_too(db_):
    def replicated(key: int) -> None:
        with db_.transaction():   # what a logical replication apply worker runs as
            db_.execute("SET LOCAL session_replication_role = replica")
            db_.execute("INSERT INTO articles (id, title, body) VALUES (%s, 'r', 'row')",
                        (key,))

    source, _ = add(db_)
    replicated(1)
    assert pending(db_, source.id) == {}   # the default: like every ordinary trigger
    catalog.drop(db_, "articles")
    source, _ = add(db_, always=True)
    assert pending(db_, source.id) == {"1": 1}   # backfilled
    replicated(2)
    assert pending(db_, source.id) == {"1": 1, "2": 0}


# --- the pipeline ---------------------------------------------------------------------

def test_a_long_row_is_embedded_in_chunks_that_keep_their_headings(db_, make_pipeline):
    source, _ = add(db_, chunk_tokens=64, overlap=8)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Guide', %s)", (LONG,))
    report = embed_all(make_pipeline(), db_, source.id)
    rows = chunks(db_, source.id, "1")
    assert report.written == 1 and report.chunks == len(rows) > 4
    text = db_.execute(sql.SQL("SELECT body FROM {} WHERE key = 1").format(source.view)
                       ).fetchone()[0]
    for _, content, _, start, end in rows:
        assert text[start:end] == content          # a chunk is a slice of the row's text
        assert len(content.split()) <= 64
    headings = [h for _, _, h, _, _ in rows]
    assert "Installing" in headings and "Installing > From source" in headings
    assert "Usage" in headings
    # the last words of the long sections are searchable too: nothing was cut away
    assert any("build149" in c for _, c, _, _, _ in rows)


def test_a_row_that_shrinks_from_many_chunks_to_one_has_exactly_one(db_, make_pipeline):
    source, _ = add(db_, chunk_tokens=32, overlap=0)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 't', %s)", (LONG,))
    run = make_pipeline()
    embed_all(run, db_, source.id)
    assert len(chunks(db_, source.id, "1")) > 8
    db_.execute("UPDATE articles SET body = 'short now' WHERE id = 1")
    embed_all(run, db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "1")] == ["t\n\nshort now"]


def test_a_template_formats_the_text_and_any_column_type(db_, make_pipeline):
    source, _ = add(db_, columns=["title", "views"], template="{title} ({views} views)",
                    chunking="none")
    db_.execute("INSERT INTO articles (id, title, views) VALUES (7, 'Popular', 42)")
    embed_all(make_pipeline(), db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "7")] == ["Popular (42 views)"]
    db_.execute("UPDATE articles SET views = 43")              # now a source column
    assert pending(db_, source.id) == {"7": 0}


def test_a_bad_row_fails_alone_and_a_blank_one_is_recorded(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'fine', 'row'), "
                "(2, 'a POISON', 'row'), (3, '', ' '), (4, 'also', 'fine')")
    run = make_pipeline(poison="POISON")
    embed_all(run, db_, source.id)
    embed_all(run, db_, source.id)  # max_attempts = 2, no backoff here
    failures = dict(db_.execute("SELECT row_key, reason FROM source_failures").fetchall())
    assert failures == {"2": "model error", "3": "empty text"}
    done = {r[0] for r in db_.execute("SELECT DISTINCT row_key FROM source_chunks")}
    assert done == {"1", "4"}
    assert pending(db_, source.id) == {}
    # a change back to the text that failed queues nothing: it would fail again
    db_.execute("UPDATE articles SET title = 'a POISON!' WHERE id = 2")
    db_.execute("UPDATE articles SET title = 'a POISON' WHERE id = 2")
    assert pending(db_, source.id) == {}
    # fixing the row clears its failure and embeds it
    db_.execute("UPDATE articles SET title = 'cured' WHERE id = 2")
    assert pending(db_, source.id) == {"2": 0}
    assert "2" not in dict(db_.execute("SELECT row_key, 1 FROM source_failures").fetchall())
    embed_all(run, db_, source.id)
    assert chunks(db_, source.id, "2")


def test_identical_chunks_are_encoded_once_and_then_come_from_the_cache(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'same', 'text'), "
                "(2, 'same', 'text')")
    run = make_pipeline()
    report = embed_all(run, db_, source.id)
    assert report.model_calls == 1 and report.written == 2
    db_.execute("INSERT INTO articles (id, title, body) VALUES (3, 'same', 'text')")
    report = embed_all(run, db_, source.id)
    assert report.model_calls == 0 and report.cache_hits == 1 and report.written == 1


@pytest.mark.parametrize("taken", [False, True], ids=["change-in-the-log", "change-taken"])
def test_a_row_changed_while_it_was_embedded_is_embedded_again(db_, make_pipeline,
                                                                scratch_url, taken):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'first', 'text')")
    run = make_pipeline()
    engine_class = run.engine

    def engine(spec):
        real = engine_class(spec)
        original = real.encode

        def encode(texts):
            # another session changes the row between the read and the write
            with psycopg.connect(scratch_url, autocommit=True) as other:
                other.execute("UPDATE articles SET body = 'second' WHERE id = 1")
                if taken:   # the producer queued the change before the write
                    catalog.take_all_changes(other)
            real.encode = original
            return original(texts)

        real.encode = encode
        return real

    run.engine = engine
    report = embed_all(run, db_, source.id)
    if taken:   # the write sees the newer pending row and leaves the row to its job
        assert report.written == 0
        assert chunks(db_, source.id, "1") == []
    else:       # the text it read is written; the change, when taken, queues the row again
        assert report.written == 1
        assert [c[1] for c in chunks(db_, source.id, "1")] == ["first\n\ntext"]
    assert pending(db_, source.id) == {"1": 0}
    run.engine = engine_class
    embed_all(run, db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "1")] == ["first\n\nsecond"]
    assert pending(db_, source.id) == {}


def test_a_row_deleted_while_it_is_embedded_gets_no_chunks(db_, make_pipeline,
                                                          scratch_url):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'going', 'away')")
    run = make_pipeline()
    deleted = threading.Event()
    engine_class = run.engine

    def engine(spec):
        real = engine_class(spec)
        original = real.encode

        def encode(texts):
            def delete():
                with psycopg.connect(scratch_url, autocommit=True) as other:
                    other.execute("DELETE FROM articles WHERE id = 1")
                deleted.set()
            threading.Thread(target=delete).start()
            deleted.wait(5)
            real.encode = original
            return original(texts)

        real.encode = encode
        return real

    run.engine = engine
    embed_all(run, db_, source.id)
    assert deleted.is_set()
    assert chunks(db_, source.id, "1") == []
    assert pending(db_, source.id) == {}


def test_rows_deleted_with_triggers_off_are_repaired(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b'), (2, 'c', 'd')")
    embed_all(make_pipeline(), db_, source.id)
    with db_.transaction():
        db_.execute("SET LOCAL session_replication_role = replica")
        db_.execute("DELETE FROM articles WHERE id = 1")
        db_.execute("UPDATE articles SET body = 'changed quietly' WHERE id = 2")
    assert catalog.repair(db_, source) == 1
    assert catalog.backfill(db_, source) == 1
    assert pending(db_, source.id) == {"2": 1}


def test_drop_removes_the_source_and_nothing_of_the_table(db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b')")
    embed_all(make_pipeline(), db_, source.id)
    catalog.drop(db_, "articles")
    assert db_.execute("SELECT count(*) FROM articles").fetchone()[0] == 1
    assert db_.execute("SELECT count(*) FROM source_chunks").fetchone()[0] == 0
    assert db_.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'articles'::regclass"
                       ).fetchone()[0] == 0
    assert db_.execute("SELECT to_regclass(%s)", (f"pgfleet_source_{source.id}",)
                       ).fetchone()[0] is None
    db_.execute("INSERT INTO articles (id, title, body) VALUES (2, 'c', 'd')")  # still works
    with pytest.raises(SourceError, match="no source named 'articles'"):
        catalog.drop(db_, "articles")
    assert hnsw_indexes(db_, source.id) == {}


def test_the_restricted_role_reads_only_the_view(db_, scratch_url):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'b')")
    db_.execute("SET ROLE pgfleet_worker")
    try:
        assert db_.execute(sql.SQL("SELECT body FROM {}").format(source.view)
                           ).fetchone() == ("a\n\nb",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db_.execute("SELECT views FROM articles")
    finally:
        db_.execute("RESET ROLE")


# --- search ---------------------------------------------------------------------------

def test_a_source_search_reads_its_own_hnsw_index_and_still_finds_k_rows(db_, make_pipeline):
    source, _ = add(db_, chunk_tokens=16, overlap=0)
    [(label,)] = db_.execute("SELECT name || '@' || version FROM model_versions WHERE id = 1")
    name = f"source_chunks_hnsw_s{source.id}_v1"
    assert source.extra["indexes"] == {label: {"name": name, "valid": True}}
    definition = hnsw_indexes(db_, source.id)[name]
    assert "USING hnsw (((embedding)::vector(384)) vector_cosine_ops)" in definition
    assert f"WHERE ((source_id = {source.id}) AND (version_id = 1))" in definition
    # 40 rows of four chunks each
    db_.execute("INSERT INTO articles (id, title, body) SELECT g, 'row ' || g, "
                "(SELECT string_agg('w' || g || '_' || i, ' ') FROM generate_series(1, 56) i) "
                "FROM generate_series(1, 40) g")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    engine = next(iter(run.engines.values()))   # type: ignore[attr-defined]
    assert db_.execute("SELECT count(*) FROM source_chunks WHERE source_id = %s",
                       (source.id,)).fetchone()[0] >= 160

    def search(k: int):
        return search_source(db_, lambda spec: engine, "articles", "w7_3 w7_4", k=k)

    exact = search(30)          # a table this small is scanned and sorted
    db_.execute("SET enable_seqscan = off")
    db_.execute("SET enable_sort = off")
    try:
        from pgfleet.sources.search import nearest_sql
        plan = "\n".join(r[0] for r in db_.execute(
            sql.SQL("EXPLAIN ") + nearest_sql(384),
            {"source_id": source.id, "version_id": 1, "query": engine.encode(["q"])[0],
             "candidates": 240}))
        assert f"Index Scan using {name}" in plan
        indexed = search(30)
    finally:
        db_.execute("RESET enable_seqscan")
        db_.execute("RESET enable_sort")
    # HNSW hands back at most hnsw.ef_search chunks (40 by default): 240 are asked for, so
    # that 30 distinct rows survive keeping each row's best chunk
    keys = [h["key"] for h in indexed["hits"]]
    assert len(keys) == 30 == len(set(keys))
    assert keys == [h["key"] for h in exact["hits"]]


def test_a_version_gets_its_source_index_its_pending_rows_go_with_it_and_retired_chunks_too(
        db_, make_pipeline, scratch_url):
    from pgfleet.models import abtest
    from producers.reconcile import drop_retired

    source, _ = add(db_)
    [(model,)] = db_.execute("SELECT name FROM model_versions WHERE id = 1")
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'a', 'one'), (2, 'b', 'two')")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    [v2] = db_.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions, "
        "max_seq_length) SELECT name, 'v2-idx', kind, format, artifact, dimensions, "
        "max_seq_length FROM model_versions WHERE id = 1 RETURNING id").fetchone()
    pool = db.open_pool(scratch_url, min_size=1, max_size=1, name="pgfleet-test")
    try:
        result = abtest.set_split(db_, model, {"v1": 100, "v2-idx": 0}, wait_s=10)
        name = f"source_chunks_hnsw_s{source.id}_v{v2}"
        assert result["source_indexes"] == {"articles": {   # each version of the split
            "v1": {"name": f"source_chunks_hnsw_s{source.id}_v1", "valid": True},
            "v2-idx": {"name": name, "valid": True}}}
        assert f"(version_id = {v2})" in hnsw_indexes(db_, source.id)[name]
        # the shadow version is backfilled by the reconciler and embedded
        assert catalog.backfill(db_, source) == 2
        run.run(source.id, v2, ["1", "2"])
        db_.execute("UPDATE articles SET body = 'three' WHERE id = 1")
        assert len(pending(db_, source.id)) == 1
        assert db_.execute("SELECT count(*) FROM source_pending WHERE version_id = %s",
                           (v2,)).fetchone()[0] == 1
        # left out of the split: its pending rows go (they would be embedded for nothing)
        abtest.set_split(db_, model, {"v1": 100}, wait_s=10)
        assert db_.execute("SELECT version_id FROM source_pending WHERE source_id = %s",
                           (source.id,)).fetchall() == [(1,)]
        # retired: its chunks go after the grace period, v1's stay
        abtest.retire(db_, model, "v2-idx")
        assert drop_retired(pool, grace_s=3600) == 0
        assert drop_retired(pool, grace_s=0) == 2
        assert db_.execute("SELECT DISTINCT version_id FROM source_chunks WHERE source_id = %s",
                           (source.id,)).fetchall() == [(1,)]
    finally:
        pool.close()
        with db_.transaction():
            db_.execute("UPDATE model_versions SET active = true, traffic_percent = 100 "
                        "WHERE id = 1")
            db_.execute("DELETE FROM model_versions WHERE id = %s", (v2,))
        db_.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
            sql.Identifier(f"embeddings_hnsw_v{v2}")))


def test_the_migration_builds_a_missing_source_index(db_):
    from schema.migrate import migrate

    source, _ = add(db_)
    name = f"source_chunks_hnsw_s{source.id}_v1"
    db_.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    assert hnsw_indexes(db_, source.id) == {}
    migrate(db_)
    assert list(hnsw_indexes(db_, source.id)) == [name]


def test_search_returns_each_row_once_with_its_best_chunk(db_, make_pipeline):
    source, _ = add(db_, chunk_tokens=32, overlap=0)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Guide', %s), "
                "(2, 'Other', 'nothing about installing here')", (LONG,))
    run = make_pipeline()
    embed_all(run, db_, source.id)
    engine = next(iter(run.engines.values()))   # type: ignore[attr-defined]
    [target] = [c for c in chunks(db_, source.id, "1") if "build149" in c[1]]
    query = (f"{target[2]}\n\n{target[1]}" if target[2] else target[1])
    answer = search_source(db_, lambda spec: engine, "articles", query, k=5, mode="vector")
    keys = [h["key"] for h in answer["hits"]]
    assert keys[0] == "1" and len(keys) == len(set(keys))
    assert answer["hits"][0]["chunk"]["number"] == target[0]
    assert answer["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    # hybrid: the full-text side finds the word, the fusion ranks the row first
    answer = search_source(db_, lambda spec: engine, "articles", "build77", k=5, mode="hybrid")
    assert answer["hits"][0]["key"] == "1"
    assert "build77" in answer["hits"][0]["chunk"]["text"]
    assert answer["mode"] == "hybrid" and answer["source"] == "articles"


def test_a_search_routed_to_a_version_still_backfilling_the_source_falls_back(
        db_, make_pipeline):
    source, _ = add(db_)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Guide', 'install it')")
    run = make_pipeline()
    embed_all(run, db_, source.id)
    [v2] = db_.execute(
        "INSERT INTO model_versions (name, version, kind, format, artifact, dimensions, "
        "max_seq_length) SELECT name, 'v2-src', kind, format, artifact, dimensions, "
        "max_seq_length FROM model_versions WHERE id = 1 RETURNING id").fetchone()
    try:
        with db_.transaction():
            db_.execute("UPDATE model_versions SET active = true, traffic_percent = 50 "
                        "WHERE id IN (1, %s)", (v2,))
        assert catalog.backfill(db_, source, v2) == 1          # v2 has the row left to embed
        engine = next(iter(run.engines.values()))   # type: ignore[attr-defined]

        def search(key: str):
            return search_source(db_, lambda spec: engine, "articles", "install", k=3, key=key)

        answers = {f"user-{i}": search(f"user-{i}") for i in range(40)}
        moved = [a for a in answers.values() if a["assigned_version"].endswith("@v2-src")]
        stayed = [a for a in answers.values() if a["assigned_version"].endswith("@v1")]
        assert moved and stayed                                 # the split sends keys to both
        for answer in moved:                                    # v2 is incomplete: v1 answers
            assert answer["fallback_from"] == answer["assigned_version"]
            assert answer["version"].endswith("@v1") and answer["hits"][0]["key"] == "1"
        assert all("fallback_from" not in a for a in stayed)
        logged = db_.execute("SELECT version_id, assigned_version_id FROM inference_logs "
                             "WHERE id = %s", (moved[0]["log_id"],)).fetchone()
        assert logged == (1, v2)
        # once v2 has the source's rows, it answers its share itself
        run.run(source.id, v2, ["1"])
        key = next(k for k, a in answers.items() if a is moved[0])
        answer = search(key)                                    # sticky: v2 again
        assert answer["version"].endswith("@v2-src") and "fallback_from" not in answer
    finally:
        with db_.transaction():
            db_.execute("UPDATE model_versions SET traffic_percent = 100 WHERE id = 1")
            db_.execute("DELETE FROM inference_logs WHERE version_id = %s "
                        "OR assigned_version_id = %s", (v2, v2))
            db_.execute("DELETE FROM model_versions WHERE id = %s", (v2,))


def test_status_and_metrics_show_each_source(db_, scratch_url, make_pipeline):
    from pgfleet.ops.metrics import FleetCollector
    from pgfleet.ops.status import source_rows

    source, _ = add(db_, chunk_tokens=32, overlap=0)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Guide', %s), (2, 'b', 'c')",
                (LONG,))
    embed_all(make_pipeline(), db_, source.id)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (3, 'new', 'row')")
    [row] = source_rows(db_)
    assert row["source"] == "articles" and row["version"] == "all-minilm-l6-v2@v1"
    assert (row["embedded"], row["pending"], row["failed"]) == (2, 1, 0)
    assert row["chunks"] > 8 and row["oldest_pending_s"] >= 0
    families = {f.name: f for f in FleetCollector(scratch_url).collect()}
    [sample] = families["pgfleet_source_pending_rows"].samples
    assert sample.labels == {"source": "articles", "model": "all-minilm-l6-v2",
                             "version": "v1"} and sample.value == 1.0
    assert families["pgfleet_source_chunks"].samples[0].value == row["chunks"]


def test_verify_finds_what_is_wrong_with_a_sources_chunks(db_, make_pipeline):
    from pgfleet.embedding.verify import consistent

    source, _ = add(db_, chunk_tokens=32, overlap=0)
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'Guide', %s), (2, 'b', 'c'), "
                "(3, 'd', 'e'), (4, 'f', 'g')", (LONG,))
    embed_all(make_pipeline(), db_, source.id)
    [report] = catalog.verify(db_)
    assert report["rows"] == 4 and consistent([report])
    with db_.transaction():
        db_.execute("SET LOCAL session_replication_role = replica")
        db_.execute("UPDATE articles SET body = 'quietly changed' WHERE id = 2")
        db_.execute("DELETE FROM articles WHERE id = 3")
        db_.execute("INSERT INTO articles (id, title, body) VALUES (5, 'quiet', 'insert')")
    db_.execute("DELETE FROM source_chunks WHERE row_key = '1' AND chunk = 1")
    [report] = catalog.verify(db_)
    assert {k: report[k] for k in ("missing", "stale", "orphaned", "duplicated")} == {
        "missing": 1, "stale": 1, "orphaned": 1, "duplicated": 1}
    assert not consistent([report], settled=False)


def test_a_hostile_template_is_text_and_nothing_else(db_, make_pipeline):
    """Quotes, dollar quotes, comments and statement ends in a template's literal text
    reach the embedded text as written; nothing of them runs."""
    template = "x'); DROP TABLE docs; -- $$ $body$ {title} \\'; END; $$ LANGUAGE sql; --"
    source, _ = add(db_, columns=["title"], template=template, chunking="none")
    db_.execute("INSERT INTO articles (id, title, body) VALUES (1, 'T', 'b')")
    embed_all(make_pipeline(), db_, source.id)
    assert [c[1] for c in chunks(db_, source.id, "1")] == [template.replace("{title}", "T")]
    assert db_.execute("SELECT to_regclass('docs')").fetchone()[0] is not None
