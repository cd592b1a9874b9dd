"""The pgfleet command as a person runs it: `pgfleet up` with the embedded default, the
other commands against it, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys

import psutil
import pytest

from pgfleet import db
from pgfleet.errors import DatabaseUnavailable
from tests.conftest import ROOT, create_database, run_cli, wait_until

pytestmark = pytest.mark.e2e


def _env(home, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGFLEET_DATABASE_URL", "PGFLEET_REDIS_URL")}
    env.update(PGFLEET_HOME=str(home), PGFLEET_FLOWER_PORT="0", PGFLEET_METRICS_PORT="0",
               PGFLEET_API_PORT="0", **extra)
    for name in ("PGFLEET_API_URL", "PGFLEET_API_KEY"):
        env.pop(name, None)
    return env


def _port_open(url_port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", url_port)) == 0


def test_up_runs_the_fleet_and_sigterm_stops_every_child(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "up"], env=env, cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state_path = home / "fleet.json"
        wait_until(state_path.exists, 60, message="fleet.json")
        state = json.loads(state_path.read_text())
        # every pgfleet command with the same PGFLEET_HOME talks to this fleet
        url = run_cli("db", "url", env=env)
        assert url.returncode == 0 and url.stdout.strip() == state["database_url"]
        pg_port = int(state["database_url"].split(":")[-1].split("/")[0])
        redis_port = int(state["redis_url"].split(":")[-1].split("/")[0])

        with db.connect(state["database_url"], autocommit=True) as conn:
            doc_id = conn.execute("INSERT INTO docs (content) VALUES ('hello from any client') "
                                  "RETURNING id").fetchone()[0]
            wait_until(lambda: conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                            (doc_id,)).fetchone(), 120, message="embedded")
            # the producer and the embedding workers run as the restricted login, not as
            # the superuser the commands use
            logins = dict(conn.execute(
                "SELECT DISTINCT application_name, usename FROM pg_stat_activity "
                "WHERE application_name IN ('pgfleet-producer', 'pgfleet-worker')").fetchall())
            assert logins == {"pgfleet-producer": "pgfleet_fleet",
                              "pgfleet-worker": "pgfleet_fleet"}, logins
            assert conn.execute("SELECT pg_has_role('pgfleet_fleet', 'pgfleet_worker', "
                                "'USAGE'), rolsuper FROM pg_roles WHERE rolname = "
                                "'pgfleet_fleet'").fetchone() == (True, False)

        # the servers take passwords only, kept in a file only the owner can read
        credentials = home / "credentials.json"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        secrets = json.loads(credentials.read_text())
        assert state["database_url"].startswith(
            f"postgresql://postgres:{secrets['postgres_password']}@127.0.0.1:")
        assert run_cli("db", "url", "--reader", env=env).stdout.strip() == state["reader_url"]
        with pytest.raises(DatabaseUnavailable):
            db.connect(state["database_url"].replace(secrets["postgres_password"], "guess"))

        # Flower is up, and refuses requests without its password; that password is not in
        # this output (a file, not a terminal), which says where to find it instead
        password = secrets["flower_password"]
        assert "credentials.json" in (tmp_path / "up.log").read_text()
        base = f"http://127.0.0.1:{state['flower_port']}"
        wait_until(lambda: _http(f"{base}/healthcheck")[0] == 200, 60, message="Flower up")
        assert _http(f"{base}/api/workers")[0] == 401
        assert _http(f"{base}/api/workers", auth=("admin", "wrong"))[0] == 401
        code, body = _http(f"{base}/api/workers?refresh=1", auth=("admin", password))
        assert code == 200 and "gpu@" in body, body[:300]
        outputs = [p.read_text(errors="replace") for p in (home / "logs").glob("*.log")]
        outputs.append((tmp_path / "up.log").read_text(errors="replace"))
        for secret in secrets.values():
            assert all(secret not in text for text in outputs), "a secret reached a log"

        # the Prometheus endpoint serves the data; beat runs with its file under the home
        metrics = f"http://127.0.0.1:{state['metrics_port']}/metrics"
        embedded = 'pgfleet_embedded_docs{model="all-minilm-l6-v2",version="v1"} 1.0'
        wait_until(lambda: embedded in _http(metrics)[1], 60, interval_s=0.5,
                   message="the metrics endpoint")
        assert _child(up.pid, "beat") is not None
        wait_until(lambda: any(home.glob("celerybeat-schedule*")), 30, message="beat's file")

        status = run_cli("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        [version] = data["versions"]
        assert {"name", "version", "docs", "embedded", "pending", "failed",
                "oldest_pending_s"} <= set(version)
        assert version["docs"] == version["embedded"] == 1
        queues = sorted(q for w in data["workers"] for q in w["queues"])
        assert queues == ["embed.cpu", "embed.gpu", "training"], data["workers"]
        assert all({"name", "queues"} <= set(w) for w in data["workers"])

        # the HTTP API is a child too; the command line asks it, with the home's own key
        wait_until(lambda: run_cli("status", "--json", env=env).stdout.count('"up": true'),
                   120, interval_s=1, message="the API in pgfleet status")
        assert state["api_url"].startswith("http://127.0.0.1:")
        found = run_cli("search", "hello", "--json", env=env)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["hits"][0]["doc_id"] == doc_id
        api_log = (home / "logs" / "api.log").read_text(errors="replace")
        assert re.search(r'"POST /v1/search HTTP/1.1"\s+200', api_log), api_log[-2000:]
        assert secrets["api_key"] not in api_log
        with db.connect(state["database_url"], autocommit=True) as conn:
            assert conn.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE "
                                "application_name = 'pgfleet-api'").fetchall() == [
                ("pgfleet_fleet",)]
        # a killed API is started again, and the command line finds it again
        api = _child(up.pid, " serve ")
        api.kill()
        wait_until(lambda: (p := _child(up.pid, " serve ")) and p.pid != api.pid, 30,
                   message="the API restarted")
        wait_until(lambda: run_cli("status", "--json", env=env).stdout.count('"up": true'),
                   120, interval_s=1, message="the restarted API answering")
        again = run_cli("search", "hello", "--json", env=env)
        assert again.returncode == 0 and json.loads(again.stdout)["cache_hit"] is True

        # a child that dies is restarted, and the restart is logged
        producer = _child(up.pid, "producers")
        producer.kill()
        wait_until(lambda: (p := _child(up.pid, "producers")) and p.pid != producer.pid, 30,
                   message="producer restarted")
        wait_until(lambda: b"producer exited with code -9" in (tmp_path / "up.log").read_bytes(),
                   10, message="restart logged")

        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 5
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], [p.pid for p in alive]
        assert not state_path.exists()
        assert not _port_open(pg_port) and not _port_open(redis_port)
    finally:
        _stop(up)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "fleet stopped" in output and "Traceback" not in output


def _stop(up: subprocess.Popen) -> None:
    """After a failed check: SIGTERM first, so that `pgfleet up` stops its children (each
    in a session of its own, which a SIGKILL of its group would leave running)."""
    if up.poll() is not None:
        return
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)


def _http(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()   # it holds the response's socket
        return exc.code, ""
    except OSError:
        return 0, ""


def _child(pid: int, needle: str) -> psutil.Process | None:
    for proc in psutil.Process(pid).children(recursive=False):
        try:
            if needle in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def test_a_killed_up_leaves_nothing_behind_after_the_next_start(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    first = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "up", "--no-flower"], env=env,
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    second = None
    try:
        state_path = home / "fleet.json"
        wait_until(lambda: state_path.exists() and "children" in state_path.read_text(), 60,
                   message="fleet.json with children")
        orphans = psutil.Process(first.pid).children(recursive=True)
        first.kill()  # SIGKILL: no cleanup runs
        first.wait(10)
        assert any(p.is_running() for p in orphans)
        second = subprocess.Popen([sys.executable, "-m", "pgfleet.cli", "up", "--no-flower"],
                                  env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: state_path.exists()
                   and json.loads(state_path.read_text()).get("pid") == second.pid, 60,
                   message="second fleet up")
        _, alive = psutil.wait_procs(orphans, timeout=15)
        assert alive == [], [(p.pid, p.cmdline()) for p in alive]
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_a_second_up_on_the_same_home_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "fleet.json").write_text(json.dumps({"pid": os.getpid(), "database_url": "x",
                                                 "redis_url": "y"}))
    result = run_cli("up", env=_env(home))
    assert result.returncode == 2
    assert "already running" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_gives_one_clear_line(tmp_path):
    env = _env(tmp_path, PGFLEET_DATABASE_URL="postgresql://app:s3cret@127.0.0.1:1/app",
               PGFLEET_REDIS_URL="redis://127.0.0.1:1/0")
    for args in (["status"], ["db", "migrate"], ["search", "anything"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, result
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:1/app" in lines[0]
        assert "s3cret" not in result.stderr + result.stdout


def test_malformed_url_and_missing_fleet_give_one_clear_line(tmp_path):
    bad = run_cli("status", env=_env(tmp_path, PGFLEET_DATABASE_URL="mysql://x"))
    assert bad.returncode == 2 and "must start with postgresql://" in bad.stderr
    missing = run_cli("db", "url", env=_env(tmp_path))
    assert missing.returncode == 2 and "pgfleet up" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr


def test_unreachable_redis_gives_one_clear_line(scratch_url, scratch, tmp_path):
    # the scratch database: no fleet process of another test may publish this doc first
    clean = scratch
    clean.execute("INSERT INTO docs (content) VALUES ('needs a broker')")
    env = _env(tmp_path, PGFLEET_DATABASE_URL=scratch_url,
               PGFLEET_REDIS_URL="redis://127.0.0.1:1/0")
    result = subprocess.run([sys.executable, "-m", "producers", "--once"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot publish to the broker" in result.stderr
    # the claim was rolled back: the work is still there to publish
    assert clean.execute("SELECT count(*) FROM pending_embeddings WHERE enqueued_at IS NULL"
                         ).fetchone()[0] == 1


def test_up_with_an_unreachable_redis_says_so_in_one_line(services, tmp_path):
    env = _env(tmp_path, PGFLEET_DATABASE_URL=services.database_url,
               PGFLEET_REDIS_URL="redis://:pw@127.0.0.1:1/0")
    result = run_cli("up", env=env, timeout_s=60)
    assert result.returncode == 1
    assert "cannot connect to Redis at redis://:***@127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_reports_bad_rows_and_inserts_the_good_ones(services, clean, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "good one"}\n{"oops": 1}\n{"content": "good two"}\n', "utf-8")
    notes = tmp_path / "notes.md"
    notes.write_text("# Title\nbody\n\n# Other\nmore\n", "utf-8")
    result = run_cli("load", str(path), str(notes),
                     env=_env(tmp_path, PGFLEET_DATABASE_URL=services.database_url,
                              PGFLEET_REDIS_URL=services.redis_url))
    assert result.returncode == 1
    assert "docs.jsonl:2" in result.stderr
    assert "inserted 4 docs from 2 file(s)" in result.stdout
    assert clean.execute("SELECT count(*) FROM docs").fetchone()[0] == 4


def test_failures_verify_and_retry(services, tmp_path):
    # a database of its own: the session's fleet (when a test started it) consumes the
    # shared one, and would embed these docs while this test counts their pending rows
    url = create_database(services, "pgfleet_e2e_failures")
    env = _env(tmp_path, PGFLEET_DATABASE_URL=url, PGFLEET_REDIS_URL=services.redis_url)
    with db.connect(url, autocommit=True) as clean:
        _failures_verify_and_retry(clean, env)


def _failures_verify_and_retry(clean, env) -> None:
    clean.execute("INSERT INTO docs (content) VALUES ('fine'), ('also fine')")
    clean.execute("DELETE FROM pending_embeddings WHERE doc_id = 2")
    clean.execute("INSERT INTO embedding_failures (doc_id, version_id, reason, attempts, "
                  "last_error) VALUES (2, 1, 'model error', 5, 'RuntimeError: boom')")
    listing = run_cli("failures", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert row["doc_id"] == 2 and row["reason"] == "model error" and row["attempts"] == 5
    check = run_cli("verify", "--json", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    [report] = json.loads(check.stdout)
    assert report["failed_with_content"] == 1 and report["pending"] == 1
    retried = run_cli("failures", "--retry", env=env)
    assert retried.returncode == 0 and "queued 1 doc(s) again" in retried.stdout
    assert clean.execute("SELECT count(*) FROM embedding_failures").fetchone()[0] == 0
    assert clean.execute("SELECT attempts, enqueued_at FROM pending_embeddings WHERE doc_id = 2"
                         ).fetchone() == (0, None)
    # a stale vector is something verify reports, with exit code 1
    clean.execute("INSERT INTO embeddings (doc_id, version_id, embedding, content_hash) "
                  "VALUES (1, 1, array_fill(0.1, ARRAY[384])::vector, '\\x00')")
    clean.execute("DELETE FROM pending_embeddings WHERE doc_id = 1")
    bad = run_cli("verify", "--json", env=env)
    assert bad.returncode == 1 and json.loads(bad.stdout)[0]["stale"] == 1


def test_migrate_gives_the_reader_its_login(services, tmp_path):
    import psycopg

    env = _env(tmp_path, PGFLEET_DATABASE_URL=services.database_url,
               PGFLEET_REDIS_URL=services.redis_url, PGFLEET_READER_URL=services.reader_url)
    result = run_cli("db", "migrate", "--reader-login", env=env)
    assert result.returncode == 0, result.stderr
    assert "pgfleet_reader may log in" in result.stdout
    with psycopg.connect(services.reader_url) as reader:
        assert reader.execute("SELECT session_user").fetchone() == ("pgfleet_reader",)
    secret = services.reader_url.split(":")[2].split("@")[0]
    assert secret not in result.stdout + result.stderr
    wrong = run_cli("db", "migrate", "--reader-login",
                    env={**env, "PGFLEET_READER_URL": services.database_url})
    assert wrong.returncode == 2 and "needs PGFLEET_READER_URL with the user" in wrong.stderr


def test_load_reports_lines_postgresql_cannot_store_and_loads_the_rest(services, clean,
                                                                       tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "good one"}\n'
                    '{"content": "a\\u0000b"}\n'
                    '{"content": "\\ud800"}\n'
                    '{"content": "meta", "metadata": {"k": "\\u0000"}}\n'
                    '{"content": "meta", "metadata": {"k": "\\ud800"}}\n'
                    '{"content": "good two"}\n', "utf-8")
    result = run_cli("load", "--batch-size", "2", str(path),
                     env=_env(tmp_path, PGFLEET_DATABASE_URL=services.database_url,
                              PGFLEET_REDIS_URL=services.redis_url))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for line in (2, 3, 4, 5):
        assert f"docs.jsonl:{line}" in result.stderr, result.stderr
    assert "inserted 2 docs from 1 file(s); 4 problem(s)" in result.stdout, result.stdout
    assert sorted(r[0] for r in clean.execute("SELECT content FROM docs")) == \
        ["good one", "good two"]


def test_bench_serve_measures_the_api_against_the_bare_engine(tmp_path):
    env = _env(tmp_path / "home")
    run = run_cli("bench", "serve", "--docs", "24", "--seconds", "0.5", "--clients", "1,2",
                  "--json", env=env, timeout_s=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["machine"]["cores"] >= 1 and result["settings"]["api_max_batch"] >= 1
    assert set(result["http"]["search"]) == set(result["http"]["embeddings"]) == {"1", "2"}
    for row in (result["bare"]["search"], result["http"]["search"]["2"],
                result["http"]["embeddings"]["1"], result["cache_hit"]):
        assert row["requests"] > 0 and row["errors"] == 0 and row["p50_ms"] > 0, row
    assert result["bare"]["embeddings"]["best_texts_per_s"] > 0
    assert result["backlog"]["idle"]["docs_per_s"] > 0
    assert set(result["targets"]) >= {"search_16_over_bare", "backlog_search_p95_ms"}
