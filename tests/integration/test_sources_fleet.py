"""A user's table embedded by the real fleet: `pgfleet source add` on the command line, the
producer and a real worker with the packaged model, then `pgfleet search --source` in
process and `/v1/search` with a source through the API."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, wait_until

pytestmark = pytest.mark.integration

GUIDE = "\n\n".join([
    "# Installing the fleet",
    "Install the package with pip, then run the setup command once. " * 12,
    "## Configuring the broker",
    "Redis is the broker; point the fleet at it with its URL. " * 12,
    "# Backups",
    "Take nightly backups of the database with pg_dump and keep a week of them.",
])


@pytest.fixture
def notes(fleet, conn):
    conn.execute("DROP TABLE IF EXISTS fleet_notes CASCADE")
    conn.execute("CREATE TABLE fleet_notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                 "title text NOT NULL, body text NOT NULL, stars integer DEFAULT 0)")
    conn.execute("INSERT INTO fleet_notes (title, body) VALUES ('Guide', %s)", (GUIDE,))
    yield conn
    run_cli("source", "drop", "notes", env=fleet.services.env())
    conn.execute("DROP TABLE IF EXISTS fleet_notes CASCADE")


def chunk_count(conn, key: str | None = None) -> int:
    return conn.execute(
        "SELECT count(*) FROM source_chunks c JOIN sources s ON s.id = c.source_id "
        "WHERE s.name = 'notes' AND (%s::text IS NULL OR c.row_key = %s::text)",
        (key, key)).fetchone()[0]


def test_a_table_added_as_a_source_is_embedded_in_chunks_and_searchable(fleet, notes, api):
    env = fleet.services.env()
    added = run_cli("source", "add", "notes", "--table", "fleet_notes", "--columns",
                    "title,body", "--chunk-tokens", "48", "--overlap", "8", "--json", env=env)
    assert added.returncode == 0, added.stderr
    added_json = json.loads(added.stdout.splitlines()[-1])
    assert added_json["queued"] == 1                                   # the backfill
    # its HNSW index, one per active version, built while the fleet runs
    assert added_json["indexes"] and all(i["valid"] for i in added_json["indexes"].values())
    [guide] = [r[0] for r in notes.execute("SELECT id::text FROM fleet_notes")]
    wait_until(lambda: chunk_count(notes, guide) >= 4, 120, message="the guide's chunks")
    # a live insert is embedded without anyone calling anything
    [short] = [r[0] for r in notes.execute(
        "INSERT INTO fleet_notes (title, body) VALUES ('Cats', 'Cats sleep most of the day.') "
        "RETURNING id::text")]
    wait_until(lambda: chunk_count(notes, short) == 1, 60, message="the new row's chunk")
    # a change of a column that is not embedded queues nothing
    notes.execute("UPDATE fleet_notes SET stars = 5")
    assert notes.execute("SELECT (SELECT count(*) FROM source_pending) + "
                         "(SELECT count(*) FROM source_changes)").fetchone()[0] == 0

    found = run_cli("search", "how do I back up the database", "--source", "notes", "--json",
                    env=env)
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout.splitlines()[-1])
    assert answer["source"] == "notes" and answer["mode"] == "vector"
    top = answer["hits"][0]
    assert top["key"] == guide
    assert "pg_dump" in top["chunk"]["text"] and top["chunk"]["heading"] == "Backups"
    assert len({h["key"] for h in answer["hits"]}) == len(answer["hits"]) == 2

    reply = api.post("/v1/search", {"query": "Redis broker URL", "source": "notes",
                                    "mode": "hybrid", "k": 3})
    assert reply.status_code == 200, reply.text
    hybrid = reply.json()
    assert hybrid["hits"][0]["key"] == guide
    assert "Configuring the broker" in hybrid["hits"][0]["chunk"]["heading"]
    assert api.post("/v1/search", {"query": "x", "source": "nowhere"}).status_code == 404
    assert api.post("/v1/search", {"query": "x", "mode": "hybrid"}).status_code == 422

    # the row shrinks to one chunk; then it is deleted: nothing of it is left
    notes.execute("UPDATE fleet_notes SET body = 'Short now.' WHERE id = %s::uuid", (guide,))
    wait_until(lambda: chunk_count(notes, guide) == 1, 60, message="one chunk left")
    notes.execute("DELETE FROM fleet_notes WHERE id = %s::uuid", (guide,))
    assert chunk_count(notes, guide) == 0

    listed = run_cli("source", "list", "--json", env=env)
    rows = {r["name"]: r for r in json.loads(listed.stdout.splitlines()[-1])}
    assert rows["notes"]["rows_embedded"] == 1 and rows["notes"]["pending"] == 0
    assert rows["docs"]["builtin"] is True

    refused = run_cli("source", "add", "bad", "--table", "fleet_notes", "--columns", "stars",
                      env=env)
    assert refused.returncode != 0
    assert "stars (integer): not text; give --template" in refused.stderr + refused.stdout
