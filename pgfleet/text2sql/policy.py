"""What SQL may run, decided from the text alone: an allow-list, not a validator.

sqlglot parses almost anything, so nothing here proves a query is valid (EXPLAIN does that).
It only lets through one statement whose every node is part of a read-only query: a SELECT,
a set operation over selects, or a WITH whose queries are all selects, that calls only
functions of :data:`ALLOWED_FUNCTIONS` and casts only to :data:`ALLOWED_TYPES`.

A deny-list of functions loses: ``ts_stat`` and ``ts_rewrite`` run SQL given as text,
``query_to_xml`` too, and a name can be spelled quoted, schema-qualified or with a comment
before its parenthesis. So functions are allowed by name: side-effect-free built-ins that a
question's SQL needs (aggregates, window functions, math, text, date and time, conditional,
arrays, JSON accessors, ``generate_series`` and ``unnest``), called by their plain,
unquoted name, never schema-qualified. Two checks agree on that: every function node of the
parsed tree, and every word followed by ``(`` in the tokens of the normalized SQL, which is
the text that runs (comments removed), so a call sqlglot reads as something else is still
seen as PostgreSQL will see it. A word before ``(`` is allowed only as an allowed function,
a keyword construct (``IN (``, ``OVER (``, ``CAST(``), or the column list of a table alias
or a WITH query.

The text that runs is the one regenerated from the checked tree, so what PostgreSQL sees is
what was checked, not a second reading of the original text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from pgfleet.text2sql.allow_list import (
    ALLOWED_FUNCTIONS,
    ALLOWED_TYPE_NAMES,
    ALLOWED_TYPES,
    CONTEXT_SYNTAX,
    INFIX_AFTER,
    INFIX_SYNTAX,
    SYNTAX,
)

DIALECT = "postgres"
MAX_SQL_CHARS = 100_000

_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_LITERALS = frozenset({TokenType.NUMBER, TokenType.PARAMETER, TokenType.PLACEHOLDER})
_WITH = frozenset({"with", "recursive"})
_CALL_HELP = ("only built-in functions on the allow-list may be called (aggregates, window, "
              "math, text, date and time, conditional, array and JSON functions), by their "
              "plain name")


def allowed_function(name: str) -> bool:
    """Whether a call of ``name`` (as written, unquoted and unqualified) is allowed."""
    return name.lower() in ALLOWED_FUNCTIONS


# Statement kinds that are never part of a read-only query, wherever they appear.
_WRITES: dict[type[exp.Expr], str] = {
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
    reasons = tree_reasons(root)
    if reasons:
        return Decision(False, _unique(reasons), stripped)
    normalized = root.sql(dialect=DIALECT, comments=False)
    reasons = call_reasons(normalized)
    if reasons:
        return Decision(False, _unique(reasons), stripped)
    problem = _roundtrip_problem(normalized)
    if problem:
        return Decision(False, [problem], stripped)
    return Decision(True, [], normalized)


def tree_reasons(root: exp.Expr) -> list[str]:
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
    ctes = {cte.alias_or_name.lower() for cte in root.find_all(exp.CTE)}
    for node in root.walk():
        reason = _table_reason(node, ctes) if isinstance(node, exp.Table) else _node_reason(node)
        if reason:
            reasons.append(reason)
    return reasons


def call_reasons(normalized: str) -> list[str]:
    """Calls of functions off the allow-list, found in the tokens of the SQL that runs: a
    word followed by ``(`` is a call unless it is a keyword construct or the column list of
    an alias. String literals are data; a quoted or schema-qualified name is never called."""
    try:
        tokens = sqlglot.tokenize(normalized, read=DIALECT)
    except TokenError as exc:
        return [f"The SQL could not be read: {_first_line(exc)}"]
    openers = _openers(tokens)
    reasons = []
    for at, token in enumerate(tokens):
        if token.token_type == TokenType.UNICODE_STRING:
            reasons.append("U&'...' strings are not allowed: write the text as it is.")
            continue
        if at + 1 == len(tokens) or tokens[at + 1].token_type != TokenType.L_PAREN:
            continue
        reason = _word_call_reason(tokens, at, openers)
        if reason:
            reasons.append(reason)
    return reasons


def _word_call_reason(tokens: list[Token], at: int, openers: dict[int, int]) -> str | None:
    token = tokens[at]
    quoted = token.token_type == TokenType.IDENTIFIER
    if not quoted and not _is_word(token):
        return None  # punctuation, an operator, a literal, or a keyword of several words
    before = tokens[at - 1] if at else None
    name = token.text if quoted else token.text.lower()
    if before is not None and before.token_type == TokenType.DOT:
        qualifier = tokens[at - 2].text if at > 1 else ""
        return _qualified_reason(f"{qualifier}.{name}")
    if _alias_columns(tokens, at, openers):
        return None
    if quoted:
        return _quoted_reason(name)
    if name in ALLOWED_FUNCTIONS or name in SYNTAX:
        return None
    if name in CONTEXT_SYNTAX and before is not None \
            and before.text.lower() in CONTEXT_SYNTAX[name]:
        return None
    if name in INFIX_SYNTAX and _after_operand(before):
        return None
    return _call_reason(name)


def _after_operand(token: Token | None) -> bool:
    """Whether ``token`` ends an operand (a name, a literal, a closing parenthesis), or is
    a keyword an infix word may follow: where a function call cannot begin."""
    if token is None:
        return False
    if token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.IDENTIFIER,
                            TokenType.VAR, TokenType.NUMBER) \
            or token.token_type.name.endswith("STRING"):
        return True
    return token.text.lower() in INFIX_AFTER


def _is_word(token: Token) -> bool:
    if token.token_type in _LITERALS or token.token_type.name.endswith("STRING"):
        return False
    text = token.text
    return bool(text) and (text[0].isalpha() or text[0] == "_") \
        and all(c.isalnum() or c in "_$" for c in text)


def _alias_columns(tokens: list[Token], at: int, openers: dict[int, int]) -> bool:
    """Whether the word at ``at`` names a table alias or a WITH query with a column list
    (``AS g(n)``, ``WITH r(n) AS (...)``), or a type with modifiers (``AS numeric(10, 2)``)."""
    if at == 0:
        return False
    before = tokens[at - 1]
    if before.token_type == TokenType.ALIAS or before.text.lower() in _WITH:
        return True
    if before.token_type != TokenType.COMMA or at < 2:
        return False
    # another WITH query: the comma follows the closing parenthesis of a WITH query's body
    close = at - 2
    opener = openers.get(close)
    if opener is None or opener == 0 or opener + 1 >= len(tokens):
        return False
    first = tokens[opener + 1].token_type
    return (tokens[opener - 1].text.lower() in ("as", "materialized")
            and first in (TokenType.SELECT, TokenType.WITH, TokenType.VALUES, TokenType.L_PAREN))


def _openers(tokens: list[Token]) -> dict[int, int]:
    """The index of each closing parenthesis -> the index of the one it closes."""
    stack, openers = [], {}
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.L_PAREN:
            stack.append(i)
        elif token.token_type == TokenType.R_PAREN and stack:
            openers[i] = stack.pop()
    return openers


def _node_reason(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Lock):
        return "FOR UPDATE / FOR SHARE is not allowed: it locks rows."
    if isinstance(node, exp.Into):
        return "SELECT ... INTO is not allowed: it creates a table."
    if isinstance(node, exp.Command):
        word = str(node.this or "").upper() or "This command"
        return f"{word} is not allowed: only read-only queries may run."
    if isinstance(node, exp.DataType):
        return _type_reason(node)
    if isinstance(node, exp.Func):
        return _function_reason(node)
    for kind, word in _WRITES.items():
        if isinstance(node, kind):
            return f"{word} is not allowed: only read-only queries may run."
    return None


def _table_reason(node: exp.Table, ctes: set[str]) -> str | None:
    """A table of the system catalog (``pg_roles``, ``pg_catalog.*``,
    ``information_schema.*``): readable by any role, but never what a question is about."""
    if not isinstance(node.this, exp.Identifier):
        return None  # a function in FROM: checked as a function
    schema, name = node.db.lower(), node.name.lower()
    system = schema in _SYSTEM_SCHEMAS or schema.startswith("pg_") or (
        not schema and name.startswith("pg_") and name not in ctes)
    if not system:
        return None
    return (f"Reading {node.sql(dialect=DIALECT)} is not allowed: it is part of the system "
            f"catalog, not of the data questions are about.")


def _function_reason(node: exp.Func) -> str | None:
    """An allowed function, called by its plain name: an unknown function (``Anonymous``)
    by the name written, a function sqlglot knows by the name it is written as in
    PostgreSQL (``GroupConcat`` is ``string_agg``), or by its own SQL names."""
    parent = node.parent
    name: str | None
    if isinstance(node, exp.Anonymous):
        ident = node.this
        name = ident.name if isinstance(ident, exp.Identifier) else str(ident)
    else:
        ident, name = None, _written_name(node)
    qualifier = None
    if isinstance(parent, exp.Dot) and parent.expression is node:
        qualifier = parent.this.sql(dialect=DIALECT)
    elif isinstance(parent, exp.Table) and parent.this is node and parent.args.get("db"):
        qualifier = parent.args["db"].sql(dialect=DIALECT)
    if qualifier is not None:
        return _qualified_reason(f"{qualifier}.{name or node.sql_name().lower()}")
    if isinstance(ident, exp.Identifier) and ident.quoted:
        return _quoted_reason(ident.name)  # the name written, as above
    if name is None:
        return None  # written as a keyword construct or an operator, not as a call
    lowered = name.lower()
    if lowered in ALLOWED_FUNCTIONS or lowered in SYNTAX or lowered in CONTEXT_SYNTAX \
            or lowered in INFIX_SYNTAX:
        return None  # a construct: the token scan checks where it stands
    if not isinstance(node, exp.Anonymous) and any(
            n.lower() in ALLOWED_FUNCTIONS for n in node.sql_names()):
        return None
    return _call_reason(lowered)


def _written_name(node: exp.Func) -> str | None:
    """The name a function node is written with in PostgreSQL's SQL (``STRING_AGG`` for
    sqlglot's ``GroupConcat``); None when it is not written as ``name(...)``."""
    try:
        tokens = sqlglot.tokenize(node.sql(dialect=DIALECT, comments=False), read=DIALECT)
    except (TokenError, ValueError):
        return node.sql_name()
    if len(tokens) >= 2 and tokens[1].token_type == TokenType.L_PAREN and _is_word(tokens[0]):
        return tokens[0].text
    return None


def _type_reason(node: exp.DataType) -> str | None:
    kind = node.this
    if kind in ALLOWED_TYPES:
        return None
    if kind == exp.DataType.Type.USERDEFINED and \
            str(node.args.get("kind") or "").lower() in ALLOWED_TYPE_NAMES:
        return None
    return (f"Casting to {node.sql(dialect=DIALECT)} is not allowed: only to plain value "
            f"types (numbers, text, booleans, dates and times, intervals, JSON, arrays).")


def _call_reason(name: str) -> str:
    return f"Calling {name}() is not allowed: {_CALL_HELP}."


def _quoted_reason(name: str) -> str:
    return (f'Calling "{name}"() is not allowed: a function is called by its plain, '
            f"unquoted name.")


def _qualified_reason(name: str) -> str:
    return (f"Calling {name}() is not allowed: a function is called by its plain name, "
            f"never schema-qualified.")


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


def _unwrap(node: exp.Expr | None) -> exp.Expr | None:
    while isinstance(node, exp.Subquery):
        node = node.this
    return node


def _kind(node: exp.Expr | None) -> str:
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
