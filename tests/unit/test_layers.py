"""The house's rules that a reader cannot see at a glance: where SQL lives, and which way the
layers point (the import contracts of ``[tool.importlinter]`` in pyproject.toml)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pgfleet", "workers", "producers")
#: the one place where SQL text may be written in Python: the database boundary
BOUNDARY = ROOT / "pgfleet" / "db"
#: modules whose SQL is not a query the fleet runs, and why
NOT_QUERIES = {
    "pgfleet/text2sql/synth_templates.py": "the SQL it writes is training data for the "
                                           "text-to-SQL model, checked by the guard",
    "pgfleet/text2sql/policy.py": "its error messages quote the SQL they refuse",
    "pgfleet/ops/bench_text2sql.py": "a baseline's predictions, scored by the benchmark",
}
_LOG_CALLS = {"debug", "info", "warning", "error", "exception", "critical"}

# SQL as this project writes it: upper-case keywords at the start of a string
_SQL = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s"
    r"|CREATE\s|ALTER\s|DROP\s|TRUNCATE\s|LISTEN\s|NOTIFY\s|EXPLAIN\b|GRANT\s|REVOKE\s"
    r"|SET\s+(LOCAL\s+|SESSION\s+)?\w+\s*(=|TO\s)|LOCK\s+TABLE\s|COPY\s)")


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):   # an f-string: its literal parts
        return "".join(v.value for v in node.values
                       if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def sql_outside_the_boundary(roots: list[Path]) -> list[str]:
    """``path:line: text`` for every string in Python code that reads as SQL, outside
    ``pgfleet/db``; docstrings are not code."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            name = path.relative_to(root.parent).as_posix()
            if BOUNDARY in path.parents or name in NOT_QUERIES:
                continue
            tree = ast.parse(path.read_text("utf-8"))
            skip = {id(n.body[0].value) for n in ast.walk(tree)   # docstrings are prose
                    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                      ast.AsyncFunctionDef))
                    and n.body and isinstance(n.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr):   # its parts are read with it
                    skip.update(id(v) for v in node.values)
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _LOG_CALLS and node.args):   # log messages
                    skip.add(id(node.args[0]))
            for node in ast.walk(tree):
                text = None if id(node) in skip else _text(node)
                if text is not None and _SQL.match(text):
                    line = " ".join(text.split())[:80]
                    found.append(f"{name}:{node.lineno}: {line}")
    return found


def test_sql_is_written_in_schema_files_and_run_through_the_boundary_only():
    found = sql_outside_the_boundary([ROOT / p for p in PACKAGES])
    assert not found, ("SQL belongs in schema/queries/*.sql (by name) or in pgfleet/db/; "
                       "found in code:\n" + "\n".join(found))


def test_the_check_finds_sql_in_code(tmp_path):
    module = tmp_path / "pkg" / "module.py"
    module.parent.mkdir()
    module.write_text('"""SELECT in a docstring is prose."""\n'
                      'def f(conn, t):\n'
                      '    conn.execute("UPDATE docs SET content = %s", (t,))\n'
                      '    conn.execute(f"SELECT {t} FROM docs")\n'
                      '    log.info("LISTEN lost on %s", t)\n'
                      '    return "Select a version"\n')
    found = sql_outside_the_boundary([module.parent])
    assert [f.split(": ", 1)[1] for f in found] == ["UPDATE docs SET content = %s",
                                                      "SELECT FROM docs"]


@pytest.mark.slow
def test_the_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
