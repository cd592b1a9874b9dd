"""What SQL may run, decided from the text alone: an allow-list, not a validator.

sqlglot parses almost anything, so nothing here proves a query is valid (EXPLAIN does that).
It only lets through one statement whose every node is part of a read-only query: a SELECT,
a set operation over selects, or a WITH whose queries are all selects, calling no function
that acts outside the query (sleeps, files, settings, sequences, locks, other SQL).
The text that runs is the one regenerated from the checked tree, so what PostgreSQL sees is
what was checked, not a second reading of the original text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

DIALECT = "postgres"
MAX_SQL_CHARS = 100_000

# Functions with effects outside a read-only query, or that run SQL given as text.
DENIED_FUNCTIONS = frozenset({
    "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file",
    "lowrite", "loread",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_rotate_logfile_old", "pg_promote", "pg_switch_wal", "pg_export_snapshot",
    "set_config", "nextval", "setval", "pg_notify",
})
DENIED_PREFIXES = (
    "dblink", "lo_", "pg_advisory_", "pg_try_advisory_", "pg_logical_", "pg_create_",
    "pg_drop_", "pg_replication_", "pg_copy_", "pg_file_", "pg_ls_", "pg_backup_",
    "pg_stat_reset", "pg_log_", "pg_wal_replay_",
    # these run the query text they are given
    "query_to_xml", "table_to_xml", "cursor_to_xml", "schema_to_xml", "database_to_xml",
)

# Statement kinds that are never part of a read-only query, wherever they appear.
_WRITES: dict[type[exp.Expression], str] = {
    exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE", exp.Merge: "MERGE",
    exp.Copy: "COPY", exp.Create: "CREATE", exp.Drop: "DROP", exp.Alter: "ALTER",
    exp.TruncateTable: "TRUNCATE", exp.Grant: "GRANT", exp.Revoke: "REVOKE",
    exp.Analyze: "ANALYZE", exp.Comment: "COMMENT", exp.Set: "SET",
    exp.Transaction: "BEGIN", exp.Commit: "COMMIT", exp.Rollback: "ROLLBACK",
    exp.Use: "USE", exp.Pragma: "PRAGMA", exp.Describe: "DESCRIBE", exp.Kill: "KILL",
    exp.LoadData: "LOAD", exp.Refresh: "REFRESH", exp.Cache: "CACHE", exp.Uncache: "UNCACHE",
    exp.Declare: "DECLARE", exp.Execute: "EXECUTE", exp.Show: "SHOW", exp.Attach: "ATTACH",
    exp.Detach: "DETACH", exp.Install: "INSTALL", exp.Export: "EXPORT",
    exp.Summarize: "SUMMARIZE", exp.DML: "a data-modifying statement",
    exp.DDL: "a schema-changing statement",
}
_QUERIES = (exp.Select, exp.SetOperation)


@dataclass
class Decision:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    sql: str = ""


def decide(text: str) -> Decision:
    """Whether ``text`` is one read-only query; ``sql`` is its normalized form."""
    stripped = text.strip()
    if not stripped:
        return Decision(False, ["The SQL is empty."], stripped)
    if len(stripped) > MAX_SQL_CHARS:
        return Decision(False, [f"The SQL is longer than {MAX_SQL_CHARS} characters."], "")
    try:
        statements = [s for s in sqlglot.parse(stripped, dialect=DIALECT) if s is not None]
    except (ParseError, TokenError) as exc:
        return Decision(False, [f"The SQL could not be parsed: {_first_line(exc)}"], stripped)
    if not statements:
        return Decision(False, ["The SQL is empty (only comments or semicolons)."], stripped)
    if len(statements) > 1:
        kinds = ", ".join(_kind(s) for s in statements)
        return Decision(False, [f"Only one statement may run; this has {len(statements)} "
                                f"({kinds})."], stripped)
    root = statements[0]
    reasons = tree_reasons(root) + call_reasons(stripped)
    if reasons:
        return Decision(False, _unique(reasons), stripped)
    normalized = root.sql(dialect=DIALECT, comments=False)
    problem = _roundtrip_problem(normalized)
    if problem:
        return Decision(False, [problem], stripped)
    return Decision(True, [], normalized)


def tree_reasons(root: exp.Expression) -> list[str]:
    """Problems found in the parsed statement: its kind, and every node below it."""
    if not isinstance(_unwrap(root), _QUERIES):
        kind = _kind(root)
        return [f"{kind[:1].upper()}{kind[1:]} is not allowed: only a read-only query (SELECT, a UNION, "
                f"INTERSECT or EXCEPT of selects, or WITH over selects) may run."]
    reasons = []
    top = _unwrap(root)
    if isinstance(top, exp.Select) and not top.expressions:
        # valid SQL (one row of no columns) but never an answer: a model's truncated beam
        reasons.append("The query selects no columns.")
    for cte in root.find_all(exp.CTE):
        if not isinstance(_unwrap(cte.this), _QUERIES):
            reasons.append(f"The WITH query {cte.alias or '(unnamed)'} is {_kind(cte.this)}; "
                           f"only SELECT queries may appear in WITH.")
    for node in root.walk():
        reason = _node_reason(node)
        if reason:
            reasons.append(reason)
    return reasons


def call_reasons(text: str) -> list[str]:
    """Calls of denied functions, found in the tokens (so string literals are data, and a
    schema-qualified or quoted name is still the function it names)."""
    try:
        tokens = sqlglot.tokenize(text, read=DIALECT)
    except TokenError as exc:
        return [f"The SQL could not be read: {_first_line(exc)}"]
    reasons = []
    for token, following in zip(tokens, tokens[1:], strict=False):
        if following.token_type != TokenType.L_PAREN or token.token_type.name.endswith("STRING"):
            continue
        name = token.text.lower()
        if denied_function(name):
            reasons.append(_call_reason(name))
    return reasons


def denied_function(name: str) -> bool:
    name = name.lower().rsplit(".", 1)[-1].strip('"')
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES)


def _node_reason(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Lock):
        return "FOR UPDATE / FOR SHARE is not allowed: it locks rows."
    if isinstance(node, exp.Into):
        return "SELECT ... INTO is not allowed: it creates a table."
    if isinstance(node, exp.Command):
        word = str(node.this or "").upper() or "This command"
        return f"{word} is not allowed: only read-only queries may run."
    if isinstance(node, exp.Func):
        names = [node.name] if isinstance(node, exp.Anonymous) else list(node.sql_names())
        for name in names:
            if denied_function(name):
                return _call_reason(name.lower())
        return None
    for kind, word in _WRITES.items():
        if isinstance(node, kind):
            return f"{word} is not allowed: only read-only queries may run."
    return None


def _call_reason(name: str) -> str:
    return (f"Calling {name}() is not allowed: it acts outside a read-only query (sleeps, "
            f"files, settings, sequences, locks, or runs other SQL).")


def _roundtrip_problem(normalized: str) -> str | None:
    """The normalized text must read back as the same single statement; it is what runs."""
    try:
        again = [s for s in sqlglot.parse(normalized, dialect=DIALECT) if s is not None]
    except (ParseError, TokenError):
        again = []
    if len(again) != 1 or again[0].sql(dialect=DIALECT, comments=False) != normalized:
        return "The SQL could not be normalized into one unambiguous statement."
    extra = tree_reasons(again[0]) + call_reasons(normalized)
    return extra[0] if extra else None


def _unwrap(node: exp.Expression | None) -> exp.Expression | None:
    while isinstance(node, exp.Subquery):
        node = node.this
    return node


def _kind(node: exp.Expression | None) -> str:
    node = _unwrap(node)
    if isinstance(node, exp.Command):
        return str(node.this or "a command").upper()
    for kind, word in _WRITES.items():
        if isinstance(node, kind):
            return word
    if isinstance(node, exp.Values):
        return "VALUES"
    return "an unrecognised statement" if node is not None else "nothing"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
