"""The fleet's own tables, as the migrations create them."""

from __future__ import annotations


def test_text_to_sql_never_shows_a_table_of_the_fleets_own():
    """Every table a migration creates, but docs (the user's), is left out of the schema a
    text-to-SQL model sees; a new migration's table must be added there."""
    from pgfleet.sources.catalog import fleet_tables
    from pgfleet.text2sql.schema_text import PGFLEET_TABLES

    assert fleet_tables() - {"docs"} <= set(PGFLEET_TABLES)
