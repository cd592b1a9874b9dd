import re

import pytest

import schema
from workers.queues import queue_for_format


def test_every_query_parses_and_names_are_unique():
    queries = schema.queries()
    for name in ("claim_pending", "fetch_batch", "write_batch", "record_failure", "search",
                 "version_status", "requeue_stale", "reconcile_missing"):
        assert name in queries and queries[name].strip()
    with pytest.raises(ValueError, match="twice"):
        schema.parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(KeyError, match="no query named"):
        schema.query("nope")


def test_migrations_are_numbered_and_ordered():
    names = [m.name for m in schema.migrations()]
    assert names == sorted(names)
    assert all(re.match(r"^\d{4}_\w+\.sql$", n) for n in names)


def test_idempotent_files_only_create_or_replace():
    for item in schema.idempotent():
        # no plain CREATE TABLE / CREATE FUNCTION that would fail when re-applied
        assert not re.search(r"CREATE\s+(TABLE|FUNCTION|TRIGGER)\s", item.text, re.IGNORECASE), item.name


def test_routing_by_format():
    assert queue_for_format("torch") == "embed.gpu"
    assert queue_for_format("onnx-int8") == "embed.cpu"
    with pytest.raises(ValueError, match="no queue serves"):
        queue_for_format("tflite")


def test_a_name_given_in_two_query_files_is_refused_naming_both():
    found: dict[str, str] = {}
    origin: dict[str, str] = {}
    schema.parse_queries("-- name: a\nSELECT 1;\n", where="one.sql", into=found, origin=origin)
    with pytest.raises(ValueError, match="in one.sql and in two.sql"):
        schema.parse_queries("-- name: a\nSELECT 2;\n", where="two.sql", into=found, origin=origin)


def test_every_table_of_the_fleet_is_hidden_from_text_to_sql():
    """A table a migration creates is pgfleet's own (except the user's docs): the models
    must never see it, so a new table cannot be forgotten in PGFLEET_TABLES."""
    from pgfleet.text2sql.schema_text import PGFLEET_TABLES

    created = {name for m in schema.migrations()
               for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", m.text)}
    assert created - {"docs"} <= set(PGFLEET_TABLES), created - set(PGFLEET_TABLES)
