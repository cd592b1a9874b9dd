"""One exception root for pgfleet. Retryable and permanent errors are different classes."""

from __future__ import annotations


class PgfleetError(Exception):
    """Base of every error pgfleet raises on purpose."""


class ConfigurationError(PgfleetError):
    """A setting is missing or malformed. The message says which and how to fix it."""


class RetryableError(PgfleetError):
    """Trying again later may succeed (a server restarting, a connection dropped)."""


class PermanentError(PgfleetError):
    """Trying again will fail the same way (bad input, a missing model file)."""


class DatabaseUnavailable(RetryableError):
    """PostgreSQL could not be reached."""


class DatabaseConflict(RetryableError):
    """A deadlock or serialization failure: the transaction can simply run again."""


class DatabaseRejected(PermanentError):
    """PostgreSQL refused a statement (a constraint, a trigger, bad data): running it again
    as it is would fail the same way."""


class BrokerUnavailable(RetryableError):
    """Redis could not be reached."""


class ModelLoadError(PermanentError):
    """A model version's artifact could not be loaded."""


class InferenceFailed(PgfleetError):
    """The model failed on input that had passed validation: the server's fault, not the
    caller's (the pass's traceback is in the log)."""


class UnknownModelVersion(PermanentError):
    """No such model version."""


class InvalidTaskArguments(PermanentError):
    """A message's arguments are malformed."""


class SqlRejected(PermanentError):
    """A query was refused before it ran (not read-only, not one statement, not valid), or
    PostgreSQL refused it. ``reasons`` holds one sentence per problem."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("query rejected: " + " ".join(self.reasons))


class ResultTooLarge(SqlRejected):
    """A guarded query's result grew past its bound in bytes and was stopped there (never
    truncated: a part of a result could read as a whole one)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        super().__init__([f"The result was stopped at its bound: more than {max_bytes} bytes. "
                          f"Ask for fewer rows or columns (a LIMIT, an aggregate), or allow "
                          f"more bytes."])


class QueryTimeout(PermanentError):
    """A read-only query ran past its statement or lock timeout and was cancelled."""
