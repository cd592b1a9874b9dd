"""Apply the schema: pending migrations once each, then the idempotent files.

Everything runs in one transaction under a transaction-scoped advisory lock, so two
processes migrating at once serialize: the second finds the work done and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg

import schema

logger = logging.getLogger(__name__)

# An arbitrary constant: the advisory lock id that serializes migrations.
MIGRATION_LOCK_ID = 0x70676674  # "pgft"


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)


def migrate(conn: psycopg.Connection) -> MigrationResult:
    """Bring the database to the current schema. Safe to run any number of times."""
    result = MigrationResult()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pgfleet_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM pgfleet_migrations")}
        for migration in schema.migrations():
            if migration.name in done:
                result.already_applied.append(migration.name)
                continue
            logger.info("applying migration %s", migration.name)
            conn.execute(migration.text)
            conn.execute("INSERT INTO pgfleet_migrations (name) VALUES (%s)", (migration.name,))
            result.applied.append(migration.name)
        for item in schema.idempotent():
            conn.execute(item.text)
    return result
