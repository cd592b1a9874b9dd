"""Text-to-SQL: questions answered by SQL that can only read.

:mod:`~workers.text2sql.policy` decides from the parsed SQL alone what may run (pure);
:mod:`~workers.text2sql.readonly` runs it as a role that can only SELECT, inside a read-only
transaction with timeouts; :mod:`~workers.text2sql.guard` is the public entry point.
"""

from workers.text2sql.guard import Result, Verdict, check_sql, run_readonly

__all__ = ["Result", "Verdict", "check_sql", "run_readonly"]
