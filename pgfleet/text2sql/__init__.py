"""Text-to-SQL: questions answered by SQL that can only read.

:mod:`~pgfleet.text2sql.policy` decides from the parsed SQL alone what may run (pure, with
the allow-list of :mod:`~pgfleet.text2sql.allow_list`); :mod:`~pgfleet.text2sql.readonly`
runs it in a session of the reader login, inside a read-only transaction with timeouts and
a bound in bytes; :mod:`~pgfleet.text2sql.guard` is the public entry point. Also here: the
model, its inputs and masked values, generation, examples, synthesis, the defog benchmark.
It may import :mod:`pgfleet.models`, :mod:`pgfleet.db`, the shared modules and :mod:`schema`;
never :mod:`pgfleet.embedding` (an independent sibling), training, or anything above the
library (no Celery, Redis or click).
"""

from pgfleet.text2sql.guard import Reader, Result, Verdict, check_sql, connect_reader, run_readonly

__all__ = ["Reader", "Result", "Verdict", "check_sql", "connect_reader", "run_readonly"]
