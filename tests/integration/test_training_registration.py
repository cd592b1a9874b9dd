"""Training runs of one source that register at the same moment (threads, the real
database): each gets its own version label, and each keeps its own files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pgfleet import db

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUNS = 4


def _at_once(target, count: int = RUNS) -> tuple[dict, dict]:
    """Run ``target(i, conn)`` in ``count`` threads that start registering together."""
    results, errors = {}, {}
    start = threading.Barrier(count)

    def one(i):
        try:
            results[i] = target(i, start)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


def test_embedding_runs_registering_at_once_get_their_own_labels_and_files(scratch_url,
                                                                           scratch, tmp_path):
    from pgfleet.models.versions import embedding_version
    from pgfleet.settings import Settings
    from pgfleet.training.jobs import register_version, run_artifact_dir

    source = embedding_version(scratch, "v1")
    settings = Settings(home=tmp_path)

    def one_run(i, start):
        directory = run_artifact_dir(settings, source.name, 1000 + i)
        directory.mkdir(parents=True)
        (directory / "model.bin").write_text(f"run {i}")
        with db.connect(scratch_url, autocommit=True) as conn:
            start.wait()
            return register_version(conn, source, base="v1-ft", fmt="torch",
                                    artifact=str(directory), metrics={"run": i})

    results, errors = _at_once(one_run)
    assert not errors, errors
    assert sorted(r["version"] for r in results.values()) == \
        ["v1-ft", "v1-ft-2", "v1-ft-3", "v1-ft-4"]
    for i, registered in results.items():
        assert Path(registered["artifact"], "model.bin").read_text() == f"run {i}"
        row = scratch.execute("SELECT version, artifact, metrics, active FROM model_versions "
                              "WHERE id = %s", (registered["version_id"],)).fetchone()
        assert row == (registered["version"], registered["artifact"], {"run": i}, False)


def test_text2sql_runs_registering_at_once_get_their_own_labels(scratch_url, scratch):
    from pgfleet.training import text2sql as job
    from pgfleet.training.jobs import register_under_lock

    def one_run(i, start):
        with db.connect(scratch_url, autocommit=True) as conn:
            start.wait()
            return register_under_lock(
                conn, "race", lambda: job._version_label(conn, "race"),
                lambda label: job.register(conn, name="race", version=label,
                                           artifact=f"/models/race-run{i}", max_seq_length=64,
                                           metrics={}))

    results, errors = _at_once(one_run)
    assert not errors, errors
    assert sorted(label for label, _ in results.values()) == ["v1", "v2", "v3", "v4"]
    assert scratch.execute("SELECT count(*) FROM model_versions WHERE name = 'race'"
                           ).fetchone()[0] == RUNS


def test_a_run_writes_only_its_own_directory(tmp_path):
    from pgfleet.settings import Settings
    from pgfleet.training.jobs import run_artifact_dir

    settings = Settings(home=tmp_path)
    first = run_artifact_dir(settings, "m", 1)
    first.mkdir(parents=True)
    (first / "model.bin").write_text("one")
    second = run_artifact_dir(settings, "m", 2)
    assert second != first and (first / "model.bin").read_text() == "one"
    assert first.name == "m-run1"
