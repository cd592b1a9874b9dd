"""Sources: a user's table the fleet embeds, checked against PostgreSQL's catalog and given
its own objects.

``add`` checks everything a source names before it creates anything: the table (an ordinary
or partitioned table this role may SELECT from and create triggers on), its primary key (one
column of type integer, bigint, text or uuid), the columns (text ones, or any with a
template), the template's fields, the model name and the text search configuration. Every
name is looked up in the catalog with bound parameters and then used only as a composed
identifier; the template's literal text only as a composed literal. Then, in one
transaction, it creates:

* a view ``pgfleet_source_<id>`` (key, key as text, the text to embed), which the fleet's
  restricted role may read: it sees those columns, not the rest of the table;
* three statement-level triggers on the table (insert, update, delete) and one for
  TRUNCATE. An insert, or an update of a row's text, writes the statement's keys to the
  change log (``source_changes``, one row per 1,000 keys, no index: the least a durable
  record can cost the user's statement); the producer turns them into a pending row per
  active version of the source's model (``take_changes``). A delete removes the row's
  pending rows, chunks and failures at once. The functions are SECURITY DEFINER with a
  fixed search_path, so whoever writes the table needs no rights on the fleet's tables;
* a full-text index over the source's chunks;
* the backfill: every existing row queued behind live changes.

After that transaction, ``add`` builds the source's HNSW index for each active version of its
model (``ensure_indexes``: concurrently, so that workers writing other sources' chunks never
wait for it); ``pgfleet ab set`` builds them for a version it activates, and a source search
reads its own source's and version's index alone.

``drop`` removes all of that and the source's pending rows, chunks and failures; nothing of
the user's table.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import schema
from pgfleet import db
from pgfleet.errors import PgfleetError
from pgfleet.sources.chunking import CHUNKINGS

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: a text search configuration's name as the source takes it (looked up in the catalog too)
TEXT_CONFIG_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: the built-in source: the docs table, embedded by its own path
BUILTIN = "docs"
KEY_TYPES = {"integer": "integer", "bigint": "bigint", "text": "text", "uuid": "uuid",
             "character varying": "text"}
TEXT_TYPES = ("text", "character varying", "character", "citext", "name")
DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP = 32
MAX_TEMPLATE_CHARS = 4000


class SourceError(PgfleetError):
    """A source that cannot be added, found or dropped: the message says why."""


class UnknownSource(SourceError):
    """No source of that name."""


@dataclass
class SourceSpec:
    name: str
    table: str
    columns: list[str]
    key: str | None = None
    template: str | None = None
    model: str | None = None
    chunking: str = "markdown"
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: int = DEFAULT_OVERLAP
    text_config: str = "english"
    always: bool = False


@dataclass
class Source:
    id: int
    name: str
    schema_name: str
    table_name: str
    key_column: str
    key_type: str
    columns: list[str]
    template: str | None
    model_name: str | None
    chunking: str
    chunk_tokens: int
    overlap: int
    text_config: str
    always: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Source:
        names = cls.__dataclass_fields__.keys() - {"extra"}
        return cls(**{k: row[k] for k in names},
                   extra={k: v for k, v in row.items() if k not in names})

    @property
    def table(self) -> str:
        return f"{self.schema_name}.{self.table_name}"

    @property
    def view(self) -> sql.Identifier:
        return sql.Identifier(f"pgfleet_source_{self.id}")

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out["table"] = self.table
        out.update({k: v for k, v in extra.items() if not isinstance(v, bytes | memoryview)})
        return out


def get(conn: psycopg.Connection, name: str) -> Source:
    row = db.fetch_one(conn, "source_by_name", {"name": name})
    if row is None:
        known = [r["name"] for r in db.fetch_all(conn, "all_sources")]
        raise UnknownSource(f"no source named {name!r}; known: "
                          f"{', '.join([BUILTIN, *known])}")
    return Source.from_row(row)


def by_id(conn: psycopg.Connection, source_id: int) -> Source | None:
    row = db.fetch_one(conn, "source_by_id", {"source_id": source_id})
    return None if row is None else Source.from_row(row)


def list_sources(conn: psycopg.Connection, *, counts: bool = False) -> list[Source]:
    """Every source; with ``counts``, each with its rows embedded, chunks, pending and
    failed rows (in ``extra``: ``pgfleet source list``), which reads all their chunks."""
    query = "list_sources" if counts else "all_sources"
    return [Source.from_row(r) for r in db.fetch_all(conn, query)]


def add(conn: psycopg.Connection, spec: SourceSpec, *,
        index_wait_s: float = 10.0) -> tuple[Source, int]:
    """Check the source, create its objects and queue its existing rows, in one
    transaction. Returns the source and how many rows were queued.

    On a connection outside a transaction, the source's HNSW indexes are then built
    (``ensure_indexes``, waiting at most ``index_wait_s`` for writers of chunks); the
    source's ``extra["indexes"]`` says, per version, whether each is valid and why not.
    Inside a caller's transaction they cannot be built concurrently: the next
    ``ensure_indexes`` (``pgfleet ab set``) builds them."""
    with conn.transaction():
        checked = _check(conn, spec)
        row = db.fetch_one(conn, "insert_source", checked)
        assert row is not None
        source = Source.from_row(row)
        fleet_schema = _fleet_schema(conn)
        for statement in _ddl(conn, source, fleet_schema):
            conn.execute(statement)
        queued = backfill(conn, source)
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        source.extra["indexes"] = ensure_indexes(conn, source, lock_timeout_s=index_wait_s)
    return source, queued


def ensure_indexes(conn: psycopg.Connection, source: Source, *, lock_timeout_s: float,
                   version_id: int | None = None) -> dict[str, dict[str, Any]]:
    """Build the HNSW index of the source's chunks for each active version of its model (or
    for ``version_id`` alone) that lacks one, concurrently. Per version label: the index's
    name, whether it is valid and, when not, why (also logged)."""
    from pgfleet.db import vector_index

    out: dict[str, dict[str, Any]] = {}
    for version in db.fetch_all(conn, "source_index_versions",
                                {"model_name": source.model_name, "version_id": version_id}):
        outcome = vector_index.ensure_source_index(conn, source.id, int(version["id"]),
                                                   lock_timeout_s=lock_timeout_s)
        out[version["label"]] = {"name": outcome.name, "valid": outcome.valid}
        if outcome.problem:
            out[version["label"]]["problem"] = outcome.problem
            logger.warning("source %s: %s", source.name, outcome.problem)
    return out


def drop(conn: psycopg.Connection, name: str) -> Source:
    """Remove the source's triggers, view, index, pending rows, chunks and failures."""
    with conn.transaction():
        source = get(conn, name)
        fleet_schema = _fleet_schema(conn)
        for tgname, nspname, relname in conn.execute(
                schema.query("source_triggers"),
                {"names": [f"{_prefix(source)}_{suffix}" for suffix in EVENTS]}):
            conn.execute(_query("source_drop_trigger", trigger=sql.Identifier(tgname),
                                table=sql.SQL("{}.{}").format(sql.Identifier(nspname),
                                                              sql.Identifier(relname))))
        names = _names(source, fleet_schema)
        conn.execute(_query("source_drop_view", **names))
        for suffix in EVENTS:
            conn.execute(_query("source_drop_function",
                                **_trigger_names(source, fleet_schema, suffix)))
        conn.execute(_query("source_drop_index", **names))
        for index in db.fetch_all(conn, "source_hnsw_indexes", {"source_id": source.id}):
            conn.execute(_query("source_drop_index", fleet=names["fleet"],
                                index=sql.Identifier(index["name"])))
        db.execute(conn, "delete_source", {"source_id": source.id})
    return source


def backfill(conn: psycopg.Connection, source: Source, version_id: int | None = None) -> int:
    """Queue, behind live changes, the source's rows with no chunks of their current text and
    no pending row or failure, for its active versions."""
    count = conn.execute(_composed(source, "source_backfill"),
                         {"source_id": source.id, "model_name": source.model_name,
                          "version_id": version_id}).rowcount
    if count:
        conn.execute(schema.query("source_notify"))
    return count


#: a take of the change log queues at most this many keys (one change row more at most);
#: a take holds its pending rows' locks until it commits, which a delete of those rows waits for
TAKE_MAX_KEYS = 2_000
#: and takes at most this many change rows (single-row statements make one each)
TAKE_MAX_CHANGES = 2_000
#: the class of the advisory lock that lets one take of a source run at a time
TAKE_LOCK_CLASS = 0x70676674  # 'pgft'


@dataclass
class Taken:
    #: change rows taken, the keys they held, distinct keys, pending rows queued or reset
    changes: int = 0
    logged: int = 0
    keys: int = 0
    queued: int = 0
    #: sources whose take failed (logged; their change logs wait for the next take)
    failed: list[str] = field(default_factory=list)

    def add(self, other: Taken) -> None:
        self.changes += other.changes
        self.logged += other.logged
        self.keys += other.keys
        self.queued += other.queued


def take_changes(conn: psycopg.Connection, source: Source) -> Taken:
    """One take of the source's change log: change rows up to TAKE_MAX_KEYS keys made
    pending rows (per active version, with their text's hash; keys whose rows are gone, or
    whose text is already embedded, or failed, queue nothing), deleted. A transaction of
    its own (a savepoint inside the caller's, which then holds its locks until it commits);
    a take finds nothing while another transaction's take of the same source has not
    committed (one at a time, so that their hashes apply in order)."""
    with conn.transaction():
        locked = conn.execute(schema.query("lock_source_take"), {
            "lock_class": TAKE_LOCK_CLASS, "source_id": source.id}).fetchone()
        if not locked or not locked[0]:
            return Taken()
        row = conn.execute(_composed(source, "take_source_changes"), {
            "source_id": source.id, "model_name": source.model_name,
            "max_keys": TAKE_MAX_KEYS, "max_changes": TAKE_MAX_CHANGES}).fetchone()
    assert row is not None
    return Taken(changes=int(row[0]), logged=int(row[1]), keys=int(row[2]),
                 queued=int(row[3]))


def take_all_changes(conn: psycopg.Connection, max_takes: int = 25) -> Taken:
    """Take every source's change log until it is empty, or ``max_takes`` full takes per
    source (so that a flood of changes cannot keep the caller from publishing what it
    took). Each take is a transaction of its own (a savepoint inside the caller's). A
    source whose take fails (its table dropped under it, say) is logged and skipped: the
    others are taken all the same."""
    total = Taken()
    with conn.transaction():
        changed = [by_id(conn, int(source_id)) for (source_id,)
                   in conn.execute(schema.query("changed_sources")).fetchall()]
    for source in changed:
        if source is None:  # dropped meanwhile: drop deleted its change rows
            continue
        try:
            for _ in range(max_takes):
                step = take_changes(conn, source)
                total.add(step)
                if step.logged < TAKE_MAX_KEYS and step.changes < TAKE_MAX_CHANGES:
                    break
        except psycopg.OperationalError:
            raise   # the connection, not the source: the caller's error handling decides
        except psycopg.Error as exc:
            logger.error("taking the change log of source %s failed (its changes wait for "
                         "the next take): %s: %s", source.name, type(exc).__name__,
                         str(exc).splitlines()[0] if str(exc) else "")
            total.failed.append(source.name)
    return total


def repair(conn: psycopg.Connection, source: Source) -> int:
    """Pending rows, chunks and failures of rows that no longer exist (deleted with
    triggers off: replication, a restore)."""
    row = conn.execute(_composed(source, "source_orphans"), {"source_id": source.id}).fetchone()
    return sum(int(n) for n in row) if row else 0


def verify(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """``pgfleet verify``'s rows for every source: per active version of its model, its rows
    and how many are missing, stale, orphaned or duplicated, pending and failed."""
    out: list[dict[str, Any]] = []
    for source in list_sources(conn):
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_composed(source, "verify_source"),
                               {"source_id": source.id, "model_name": source.model_name}
                               ).fetchall()
        out.extend({"source": source.name, **{k: int(v) if isinstance(v, int) else v
                                              for k, v in r.items()}} for r in rows)
    return out


def composed(source: Source, name: str) -> sql.Composed:
    """A named query of ``schema/queries/sources.sql`` with the source's view and key type
    composed in (``{view}``, ``{key_type}``)."""
    return _composed(source, name)


def _composed(source: Source, name: str) -> sql.Composed:
    return sql.SQL(schema.query(name)).format(
        view=source.view, key_type=sql.SQL(KEY_TYPES[source.key_type]))


def _prefix(source: Source) -> str:
    return f"pgfleet_source_{source.id}"


def _fleet_schema(conn: psycopg.Connection) -> str:
    row = conn.execute(schema.query("fleet_schema")).fetchone()
    assert row is not None
    return str(row[0])


def _check(conn: psycopg.Connection, spec: SourceSpec) -> dict[str, Any]:
    _check_options(conn, spec)
    table = _table(conn, spec)
    key = _key(conn, table, spec.key)
    columns = _columns(conn, table, spec)
    if spec.model is not None and db.fetch_one(
            conn, "embedding_model_exists", {"name": spec.model}) is None:
        raise SourceError(f"--model {spec.model!r}: no embedding model of that name "
                          "(pgfleet models list)")
    if not TEXT_CONFIG_RE.match(spec.text_config) or db.fetch_one(
            conn, "text_config_exists", {"name": spec.text_config}) is None:
        raise SourceError(f"no text search configuration {spec.text_config!r} (\\dF in psql "
                          "lists them; 'simple' knows no language)")
    return {"name": spec.name, "schema_name": table["schema_name"],
            "table_name": table["table_name"], "key_column": key[0], "key_type": key[1],
            "columns": columns, "template": spec.template, "model_name": spec.model,
            "chunking": spec.chunking, "chunk_tokens": spec.chunk_tokens,
            "overlap": spec.overlap, "text_config": spec.text_config, "always": spec.always}


def _check_options(conn: psycopg.Connection, spec: SourceSpec) -> None:
    if not NAME_RE.match(spec.name):
        raise SourceError(f"source name {spec.name!r}: use 1-40 lowercase letters, digits and "
                          "underscores, starting with a letter")
    if spec.name == BUILTIN:
        raise SourceError("'docs' is the built-in source (the docs table); choose another name")
    if db.fetch_one(conn, "source_by_name", {"name": spec.name}) is not None:
        raise SourceError(f"a source named {spec.name!r} exists already "
                          f"(pgfleet source drop {spec.name} first to replace it)")
    if spec.chunking not in CHUNKINGS:
        raise SourceError(f"--chunking {spec.chunking!r}: use one of {', '.join(CHUNKINGS)}")
    if not 16 <= spec.chunk_tokens <= 8192:
        raise SourceError(f"--chunk-tokens {spec.chunk_tokens}: use 16 to 8192")
    if not 0 <= spec.overlap < spec.chunk_tokens:
        raise SourceError(f"--overlap {spec.overlap}: use 0 to --chunk-tokens - 1 "
                          f"({spec.chunk_tokens - 1})")


def _table(conn: psycopg.Connection, spec: SourceSpec) -> dict[str, Any]:
    table = db.fetch_one(conn, "source_table", {"table": spec.table})
    if table is None:
        raise SourceError(f"no table {spec.table!r} (give it as TABLE or SCHEMA.TABLE, as "
                          "psql would find it)")
    where = table["where"] = f"{table['schema_name']}.{table['table_name']}"
    if table["kind"] not in ("r", "p"):
        raise SourceError(f"{where} is not a table (a view, or another kind of relation): "
                          "a source needs a table, whose triggers see its changes")
    if table["schema_name"] in ("pg_catalog", "information_schema", "pg_toast"):
        raise SourceError(f"{where} is one of PostgreSQL's system catalogs")
    if table["schema_name"] == _fleet_schema(conn) and table["table_name"] in fleet_tables():
        raise SourceError(f"{where} is one of the fleet's own tables")
    missing = [right for right in ("SELECT", "TRIGGER") if not table[right.lower()]]
    if missing:
        raise SourceError(f"this role ({table['role']}) lacks {' and '.join(missing)} on "
                          f"{where}: GRANT SELECT, TRIGGER ON {where} TO {table['role']}; "
                          "the fleet reads the source's columns and adds triggers that queue "
                          "changed rows, nothing else")
    if spec.always and not table["owner"]:
        raise SourceError(f"--always sets the triggers ENABLE ALWAYS, which only {where}'s "
                          f"owner can do; this role ({table['role']}) is not it")
    return table


def fleet_tables() -> set[str]:
    """The fleet's own tables (and docs, the built-in source): never a source."""
    from pgfleet.text2sql.schema_text import PGFLEET_TABLES

    return {*PGFLEET_TABLES, BUILTIN}


def _key(conn: psycopg.Connection, table: dict[str, Any], wanted: str | None,
         ) -> tuple[str, str]:
    where = table["where"]
    keys = db.fetch_all(conn, "table_primary_key", {"oid": table["oid"]})
    if not keys:
        raise SourceError(f"{where} has no primary key: a source finds its rows by it")
    if len(keys) > 1:
        raise SourceError(f"{where}'s primary key has {len(keys)} columns "
                          f"({', '.join(k['name'] for k in keys)}): a source needs a one-column "
                          "key (add a surrogate key, e.g. a bigint identity column)")
    name, type_ = keys[0]["name"], keys[0]["type"]
    if wanted is not None and wanted != name:
        raise SourceError(f"--key {wanted!r}: {where}'s primary key is {name!r}; a source "
                          "keys its rows by the primary key")
    if type_ not in KEY_TYPES:
        raise SourceError(f"{where}'s key {name!r} is of type {type_}: a source's key must be "
                          "integer, bigint, text or uuid")
    return name, "text" if type_ == "character varying" else type_


def _columns(conn: psycopg.Connection, table: dict[str, Any], spec: SourceSpec) -> list[str]:
    where = table["where"]
    if not spec.columns:
        raise SourceError("--columns: name at least one column to embed")
    if len(spec.columns) > 32:
        raise SourceError(f"--columns: at most 32 columns, got {len(spec.columns)}")
    if len(set(spec.columns)) != len(spec.columns):
        raise SourceError("--columns: a column is named twice")
    found = {r["name"]: r["type"] for r in db.fetch_all(conn, "table_columns",
                                                        {"oid": table["oid"]})}
    unknown = [c for c in spec.columns if c not in found]
    if unknown:
        raise SourceError(f"{where} has no column {', '.join(map(repr, unknown))}; it has "
                          f"{', '.join(sorted(found))}")
    if spec.template is None:
        other = [f"{c} ({found[c]})" for c in spec.columns if found[c] not in TEXT_TYPES]
        if other:
            raise SourceError(f"{', '.join(other)}: not text; give --template to say how the "
                              "text is made from them, e.g. --template '{title}: {price}'")
    else:
        fields = template_fields(spec.template)
        outside = [f for f in fields if f not in spec.columns]
        if outside:
            raise SourceError(f"--template names {', '.join(map(repr, outside))}, which "
                              "--columns does not list")
    return list(spec.columns)


def template_fields(template: str) -> list[str]:
    """The columns a template names, ``{column}`` each (``{{`` and ``}}`` are braces); a
    template with no field, a format spec or a conversion is refused."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise SourceError(f"--template: at most {MAX_TEMPLATE_CHARS} characters")
    fields = []
    try:
        for _literal, field_name, format_spec, conversion in string.Formatter().parse(template):
            if field_name is None:
                continue
            if not field_name or format_spec or conversion:
                raise SourceError(
                    f"--template: {{{field_name}{'!' + conversion if conversion else ''}"
                    f"{':' + format_spec if format_spec else ''}}} is not a field: write "
                    "{column}, and {{ or }} for a brace")
            fields.append(field_name)
    except ValueError as exc:
        raise SourceError(f"--template: {exc} (write {{{{ or }}}} for a brace)") from None
    if not fields:
        raise SourceError("--template names no column: write {column} where a column's "
                          "value goes")
    return fields


def text_expression(source: Source, alias: str) -> sql.Composable:
    """The SQL of the text a row embeds, over the row alias ``alias``: the template with
    each field cast to text (a NULL is empty), or the columns joined by blank lines."""
    row = sql.Identifier(alias)
    if source.template is None:
        return sql.SQL("concat_ws({}, {})").format(
            sql.Literal("\n\n"),
            sql.SQL(", ").join(sql.SQL("{}.{}").format(row, sql.Identifier(c))
                               for c in source.columns))
    parts: list[sql.Composable] = []
    for literal, field_name, _spec, _conv in string.Formatter().parse(source.template):
        if literal:
            parts.append(sql.Literal(literal))
        if field_name:
            parts.append(sql.SQL("({}.{})::text").format(row, sql.Identifier(field_name)))
    return sql.SQL("concat({})").format(sql.SQL(", ").join(parts))


def _ddl(conn: psycopg.Connection, source: Source, fleet_schema: str,
         ) -> Sequence[sql.Composed]:
    names = _names(source, fleet_schema)
    values = {**names, "id": sql.Literal(source.id), "key": sql.Identifier(source.key_column),
              "model": sql.Literal(source.model_name),
              "text_n": text_expression(source, "n"), "text_o": text_expression(source, "o")}
    statements = [_query("source_create_view", **values, text=text_expression(source, "t")),
                  _query("source_grant_view", **values),
                  _query("source_create_index", **values)]
    for suffix in EVENTS:
        parts = {**values, **_trigger_names(source, fleet_schema, suffix)}
        # rendered here, then passed as one literal (see source_create_function)
        body = _query(f"source_trigger_{suffix}", **parts).as_string(conn)
        statements += [_query("source_create_function", **parts, body=sql.Literal(body)),
                       _query("source_revoke_function", **parts),
                       _query(f"source_create_trigger_{suffix}", **parts)]
        if source.always:
            statements.append(_query("source_enable_always", **parts))
    return statements


#: the source's triggers, one per event
EVENTS = ("inserted", "updated", "deleted", "truncated")


def _query(name: str, **parts: sql.Composable) -> sql.Composed:
    text = schema.query(name)
    used = {k: v for k, v in parts.items() if "{" + k + "}" in text}
    return sql.SQL(text).format(**used)


def _names(source: Source, fleet_schema: str) -> dict[str, sql.Composable]:
    fleet = sql.Identifier(fleet_schema)
    return {"fleet": fleet, "view": source.view,
            "table": sql.SQL("{}.{}").format(sql.Identifier(source.schema_name),
                                             sql.Identifier(source.table_name)),
            "index": sql.Identifier(f"{_prefix(source)}_tsv")}


def _trigger_names(source: Source, fleet_schema: str, suffix: str) -> dict[str, sql.Composable]:
    name = f"{_prefix(source)}_{suffix}"
    return {"trigger": sql.Identifier(name),
            "function": sql.SQL("{}.{}").format(sql.Identifier(fleet_schema),
                                                sql.Identifier(name))}
