"""Flower against a running fleet, through its real HTTP API: our workers with their queues;
each embed message and each batch (size, cache hits, duration) although celery-batches
sends no events for them; each source task with its source, version, rows and chunks; a training run with its progress; a text-to-SQL request with its
answer. And its dashboard, loaded in headless Chromium, listing our workers (skipped, with
how to install it, where Chromium is absent).
"""

from __future__ import annotations

import ast
import base64
import gc
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pgfleet import db
from tests.conftest import ROOT, Proc, create_database, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

USER = "admin"
#: a tiny text-to-SQL model (see test_text2sql_model.py), trained long enough to report
#: progress a few times
TINY_T2S = {"d_model": 32, "layers": 1, "epochs": 3, "batch_size": 16, "max_examples": 64,
            "max_eval": 4, "beams": 2, "synth_per_template": 4, "synth_phrasings": 1,
            "synth_rounds": 1}


@dataclass
class Flower:
    base: str
    password: str
    proc: Proc

    def get(self, path: str, *, auth: bool = True) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path)
        if auth:
            token = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                body = response.read().decode()
                return response.status, json.loads(body) if body[:1] in "{[" else body
        except urllib.error.HTTPError as exc:
            with exc:   # it holds the response's socket
                return exc.code, None
        except OSError:
            return 0, None

    def tasks(self, name: str) -> dict[str, dict[str, Any]]:
        code, data = self.get(f"/api/tasks?taskname={name}&limit=100000")
        assert code == 200, code
        return data

    def task(self, task_id: str) -> dict[str, Any] | None:
        code, data = self.get(f"/api/task/info/{task_id}")
        return data if code == 200 else None

    def event_workers(self) -> dict[str, Any]:
        """Workers as the dashboard knows them: from their events (heartbeats)."""
        code, data = self.get("/workers?json=1")
        return (data or {}).get("data", []) if code == 200 and isinstance(data, dict) else []


@pytest.fixture(scope="module")
def flower(fleet, tmp_path_factory) -> Iterator[Flower]:
    from pgfleet.ops.services import free_port
    from pgfleet.ops.supervisor import fleet_children

    port = free_port()
    password = secrets.token_urlsafe(16)
    [spec] = [s for s in fleet_children(flower_port=port) if s.name == "flower"]
    env = fleet.services.env(PGFLEET_FLOWER_PASSWORD=password, PGFLEET_FLOWER_USER=USER)
    proc = Proc("flower", spec.argv, env, tmp_path_factory.mktemp("flower-logs")).start()
    client = Flower(f"http://127.0.0.1:{port}", password, proc)
    try:
        wait_until(lambda: client.get("/healthcheck", auth=False)[0] == 200, 60,
                   interval_s=0.3, message="Flower up")
        # Flower sees only the events sent while it listens: wait until it hears our worker
        wait_until(lambda: any("gpu@" in str(w) for w in client.event_workers()), 60,
                   interval_s=0.5, message="Flower receiving the worker's events")
        yield client
    finally:
        proc.stop()
        log = proc.log()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "flower.log").write_text(log, "utf-8")
        assert password not in log


def _literal(text: str | None) -> Any:
    return ast.literal_eval(text) if text else None


def _insert(conn, texts: list[str]) -> list[int]:
    rows = conn.execute("INSERT INTO docs (content) SELECT unnest(%s::text[]) RETURNING id",
                        (texts,)).fetchall()
    return [r[0] for r in rows]


def _embedded(conn, ids: list[int]) -> bool:
    return conn.execute("SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)",
                        (ids,)).fetchone()[0] == len(ids)


def test_the_api_needs_the_password_and_lists_our_workers_with_their_queues(flower):
    assert flower.get("/api/workers", auth=False)[0] == 401
    code, workers = flower.get("/api/workers?refresh=1")
    assert code == 200
    [name] = [n for n in workers if n.startswith("gpu@")]
    queues = [q["name"] for q in workers[name]["active_queues"]]
    assert queues == ["embed.gpu"], workers[name]
    assert "pgfleet.embed_docs" in workers[name]["registered"]


def test_each_embed_message_and_each_batch_shows_what_it_did(flower, clean):
    texts = [f"flower test doc number {i}, about write-ahead logging" for i in range(20)]
    first = _insert(clean, texts)
    wait_until(lambda: _embedded(clean, first), 120, message="first wave embedded")
    # the same texts again: embedded from the inference cache
    again = _insert(clean, texts[:10])
    wait_until(lambda: _embedded(clean, again), 120, message="second wave embedded")
    ours = set(first + again)

    def messages() -> dict[str, dict[str, Any]] | None:
        found = {tid: t for tid, t in flower.tasks("pgfleet.embed_docs").items()
                 if set(_literal(t["args"])[1]) & ours}
        covered = {d for t in found.values() for d in _literal(t["args"])[1]}
        done = all(t["state"] == "SUCCESS" for t in found.values())
        return found if covered >= ours and done else None

    found = wait_until(messages, 30, interval_s=0.5, message="our messages in Flower")
    batches: dict[str, dict[str, Any]] = {}
    for task in found.values():
        assert task["worker"].startswith("gpu@"), task
        assert task["received"] and task["started"] and task["succeeded"], task
        assert task["received"] <= task["started"] <= task["succeeded"], task
        assert task["runtime"] > 0, task
        result = _literal(task["result"])
        version_id, doc_ids = _literal(task["args"])
        assert result["version_id"] == version_id == 1
        assert result["doc_ids"] == len(doc_ids) and result["batch_failed"] == 0
        batches[result["batch"]] = wait_until(lambda b=result["batch"]: flower.task(b), 10,
                                              message="the message's batch in Flower")
    written = cache_hits = 0
    for batch in batches.values():
        assert batch["name"] == "pgfleet.embed_batch" and batch["state"] == "SUCCESS", batch
        assert batch["worker"].startswith("gpu@") and batch["runtime"] > 0, batch
        kwargs, result = _literal(batch["kwargs"]), _literal(batch["result"])
        assert kwargs["version_id"] == 1 and kwargs["messages"] >= 1, kwargs
        assert result["docs"] == kwargs["docs"] >= result["written"], result
        assert result["failed"] == 0 and result["ms"] > 0, result
        assert result["encoded"] + result["cache_hits"] == result["written"], result
        written += result["written"]
        cache_hits += result["cache_hits"]
    assert written == len(ours)
    assert cache_hits == 10


def test_a_bad_embed_message_shows_as_failed_with_its_reason(flower, fleet):
    from pgfleet.settings import Settings
    from workers.app import create_app
    from workers.queues import QUEUE_GPU, TASK_EMBED

    app = create_app(Settings(database_url=fleet.services.database_url,
                              redis_url=fleet.services.redis_url))
    try:
        sent = {app.send_task(TASK_EMBED, args=args, queue=QUEUE_GPU, ignore_result=True).id:
                why for args, why in (((424242, [1]), "model version 424242 does not exist"),
                                      (("one", "two"), "version_id must be a positive integer"))}
    finally:
        app.close()
    for task_id, why in sent.items():
        task = wait_until(lambda t=task_id: (f := flower.task(t)) and f["state"] == "FAILURE"
                          and f, 30, interval_s=0.3, message="the failed message in Flower")
        assert why in task["exception"] and task["worker"].startswith("gpu@"), task


def test_each_source_task_shows_its_source_version_rows_and_chunks(flower, clean):
    from pgfleet.sources import catalog

    clean.execute("DROP TABLE IF EXISTS flower_notes")
    clean.execute("CREATE TABLE flower_notes (id bigint PRIMARY KEY, body text NOT NULL)")
    catalog.add(clean, catalog.SourceSpec(name="flower_notes", table="flower_notes",
                                          columns=["body"], chunking="tokens",
                                          chunk_tokens=16, overlap=0))
    try:
        clean.execute("INSERT INTO flower_notes SELECT g, repeat('a note for Flower ' || g "
                      "|| ', on checkpoints and the write-ahead log. ', 6) "
                      "FROM generate_series(1, 6) g")

        def chunked() -> int | None:
            row = clean.execute(
                "SELECT count(DISTINCT row_key), count(*) FROM source_chunks c "
                "JOIN sources s ON s.id = c.source_id WHERE s.name = 'flower_notes'"
            ).fetchone()
            return row[1] if row[0] == 6 else None

        chunks = wait_until(chunked, 120, message="the source's rows embedded")
        assert chunks > 6   # several chunks a row

        def tasks() -> list[dict[str, Any]] | None:
            found = [t for t in flower.tasks("pgfleet.embed_source").values()
                     if t["state"] == "SUCCESS"
                     and _literal(t["result"])["source"] == "flower_notes"]
            return found if sum(_literal(t["result"])["written"] for t in found) >= 6 else None

        found = wait_until(tasks, 30, interval_s=0.5, message="the source's tasks in Flower")
        for task in found:
            assert task["worker"].startswith("gpu@") and task["runtime"] > 0, task
            result = _literal(task["result"])
            source_id, version_id, keys = _literal(task["args"])
            assert result["version"] == "all-minilm-l6-v2@v1" and result["version_id"] == 1
            assert result["source_id"] == source_id and result["requested"] == len(keys)
        assert sum(_literal(t["result"])["chunks"] for t in found) == chunks
    finally:
        catalog.drop(clean, "flower_notes")
        clean.execute("DROP TABLE flower_notes")


@pytest.fixture(scope="module")
def shop_env(fleet, tmp_path_factory):
    """Training and CPU workers on a database with a small shop schema (text-to-SQL needs
    tables to synthesize questions about), on the same broker that Flower watches."""
    from tests.integration.test_text2sql_data import SHOP

    url = create_database(fleet.services, "pgfleet_flower_shop")
    with db.connect(url, autocommit=True) as conn:
        conn.execute(SHOP)
    return fleet.services.env(PGFLEET_DATABASE_URL=url,
                              PGFLEET_READER_URL=fleet.services.reader_url_for(url),
                              PGFLEET_HOME=str(tmp_path_factory.mktemp("flower-shop-home")),
                              PGFLEET_TRAINING_HEARTBEAT_S="0.5", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def shop_workers(shop_env, tmp_path_factory) -> Iterator[list[Proc]]:
    from pgfleet.ops.supervisor import fleet_children

    log_dir = tmp_path_factory.mktemp("flower-shop-logs")
    procs = [Proc(f"flower-{s.name}", s.argv, shop_env, log_dir).start()
             for s in fleet_children(flower_port=None)
             if s.name in ("worker-training", "worker-cpu")]
    yield procs
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for proc in procs:
        proc.stop()
        (artifacts / f"{proc.name}.log").write_text(proc.log(), "utf-8")


@pytest.fixture(scope="module")
def celery_app(shop_env):
    from pgfleet.settings import Settings
    from workers.app import create_app

    app = create_app(Settings.from_env(shop_env))
    yield app
    app.close()


def test_a_training_run_shows_its_progress_and_a_sql_request_its_answer(
        flower, shop_workers, celery_app):
    sent = celery_app.send_task("train_text2sql", kwargs=TINY_T2S)
    sent_id = sent.id
    seen: list[dict[str, Any]] = []

    def finished() -> dict[str, Any] | None:
        task = flower.task(sent_id)
        if task is not None:
            seen.append(task)
        return task if task and task["state"] in ("SUCCESS", "FAILURE") else None

    final = wait_until(finished, 300, interval_s=0.2, message="the training run to end")
    assert final["state"] == "SUCCESS", (final, shop_workers[0].log()[-3000:])
    assert final["worker"].startswith("training@")
    progress = [_literal(t["result"]) for t in seen if t["state"] == "PROGRESS"]
    assert progress, [t["state"] for t in seen]
    assert all({"run_id", "phase", "step", "total_steps"} <= set(p) for p in progress), progress
    assert any(p.get("percent") is not None and p.get("loss") is not None for p in progress), \
        progress
    # Celery shortens a long result's repr: read the produced version from its start
    version_id = int(re.match(r"\{'version_id': (\d+),", final["result"]).group(1))

    question = "how many orders are paid?"
    asked = celery_app.send_task("generate_sql", args=(question,),
                                 kwargs={"version": version_id, "beams": 2})
    answer, asked_id = asked.get(timeout=120), asked.id
    task = wait_until(lambda: (t := flower.task(asked_id)) and t["state"] == "SUCCESS" and t,
                      20, interval_s=0.3, message="the SQL request in Flower")
    assert task["name"] == "generate_sql" and task["worker"].startswith("cpu@")
    assert question in task["args"]
    assert _literal(task["result"])["sql"] == answer["sql"]
    assert task["runtime"] > 0
    # let the results unsubscribe while Redis is still up
    del sent, asked
    gc.collect()


def test_the_dashboard_lists_our_workers_in_headless_chromium(flower, shop_workers, clean):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver "
                    "(Debian) to load Flower's dashboard in a headless browser")
    # a batch for the task list
    [doc_id] = _insert(clean, ["a doc for the dashboard's task list"])
    wait_until(lambda: _embedded(clean, [doc_id]), 120, message="embedded")
    wait_until(lambda: flower.tasks("pgfleet.embed_batch"), 20, message="a batch in Flower")
    wait_until(lambda: {"gpu@", "cpu@", "training@"} <= {
        str(w).split("@")[0] + "@" for w in _names(flower.event_workers())}, 30,
        interval_s=0.5, message="every worker on the dashboard's data")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    started = time.monotonic()
    html = _load(chromium, flower, "/workers", artifacts / "flower-workers.png")
    (artifacts / "flower-workers.html").write_text(html, "utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(
        r'<tr[^>]*>\s*<td>.*?title="([^"]+)".*?</tr>', html, re.DOTALL)}
    for prefix in ("gpu@", "cpu@", "training@"):
        [row] = [r for name, r in rows.items() if name.startswith(prefix)] or [None]
        assert row is not None, (prefix, sorted(rows))
        assert "Online" in row, row
    assert flower.password not in html
    tasks = _load(chromium, flower, "/tasks", artifacts / "flower-tasks.png")
    assert "pgfleet.embed_batch" in tasks and "pgfleet.embed_docs" in tasks
    assert time.monotonic() - started < 240


def _load(chromium: str, flower: Flower, path: str, screenshot) -> str:
    """The page's DOM once its scripts ran, and a screenshot of it."""
    screenshot.unlink(missing_ok=True)
    # a top-level navigation may carry basic-auth credentials in its URL
    url = flower.base.replace("http://", f"http://{USER}:{flower.password}@") + path
    with tempfile.TemporaryDirectory(prefix="pgfleet-chromium-") as profile:
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1400,900", "--virtual-time-budget=5000"]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = subprocess.run([*flags, f"--screenshot={screenshot}", url],
                              capture_output=True, text=True, timeout=120)
        assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000
    return dom.stdout


def _names(rows: Any) -> list[str]:
    if isinstance(rows, dict):
        return list(rows)
    return [r.get("hostname") or r.get("name") or "" for r in rows if isinstance(r, dict)]
