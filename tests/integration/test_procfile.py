"""The Procfile, run as an operator runs it: `honcho start` against the embedded PostgreSQL
and Redis of the test session. A doc gets embedded (by the GPU worker's queue, on the CPU
here), the metrics endpoint and Flower answer, and one SIGTERM stops every process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from pgfleet import db
from pgfleet.ops.services import free_port
from tests.conftest import ROOT, create_database, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def test_the_procfile_runs_the_fleet_with_honcho(services, tmp_path):
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent))
    if honcho is None:
        pytest.fail("honcho is missing: install the dev extras (pip install -e '.[dev]')")
    # a database and a Redis database of its own: no other test's worker takes its work
    database_url = create_database(services, "pgfleet_procfile")
    redis_url = services.redis_url.rsplit("/", 1)[0] + "/6"
    home = tmp_path / "home"
    metrics_port, flower_port, api_port = free_port(), free_port(), free_port()
    password = "procfile-flower-secret"
    empty_env = tmp_path / "empty.env"  # not the developer's .env
    empty_env.write_text("")
    env = services.env(
        PGFLEET_DATABASE_URL=database_url, PGFLEET_REDIS_URL=redis_url, PGFLEET_HOME=str(home),
        PGFLEET_METRICS_PORT=str(metrics_port), PGFLEET_FLOWER_PORT=str(flower_port),
        PGFLEET_API_PORT=str(api_port),
        PGFLEET_FLOWER_PASSWORD=password, PGFLEET_BATCH_MAX_WAIT_MS="50",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PGFLEET_DEVICE", None)  # auto: the GPU worker runs on the CPU without a GPU
    log_path = tmp_path / "honcho.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen([honcho, "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
                             "-e", str(empty_env), "start"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    children: list[psutil.Process] = []
    try:
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until(lambda: "pgfleet_database_up 1.0" in (_get(metrics) or ""), 90,
                   interval_s=0.5, message="the metrics endpoint")
        with db.connect(database_url, autocommit=True) as conn:
            doc_id = conn.execute("INSERT INTO docs (content) VALUES ('run by the Procfile') "
                                  "RETURNING id").fetchone()[0]
            wait_until(lambda: conn.execute("SELECT 1 FROM embeddings WHERE doc_id = %s",
                                            (doc_id,)).fetchone(), 180, interval_s=0.5,
                       message="the doc embedded by the Procfile's workers")
        embedded = 'pgfleet_embedded_docs{model="all-minilm-l6-v2",version="v1"} 1.0'
        wait_until(lambda: embedded in (_get(metrics) or ""), 30, interval_s=0.5,
                   message="the metrics to show it")
        wait_until(lambda: _get(f"http://127.0.0.1:{flower_port}/healthcheck") == "OK", 60,
                   interval_s=0.5, message="Flower")
        wait_until(lambda: any(home.glob("celerybeat-schedule*")), 30, message="beat's file")
        wait_until(lambda: '"ok":true' in (_get(f"http://127.0.0.1:{api_port}/healthz") or ""),
                   90, interval_s=0.5, message="the API")
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children if p.is_running())
        for needle in ("producers", "embed.gpu", "embed.cpu", "training", "beat", "flower",
                       "metrics", "serve"):
            assert needle in names, needle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], [p.pid for p in alive]
    output = log_path.read_text(errors="replace")
    # honcho stops everything when one process ends: none ended before the SIGTERM
    assert code == 143, output[-3000:]  # 128 + SIGTERM: stopped by the signal, as asked
    before, _, after = output.partition("SIGTERM received")
    assert " stopped (rc=" not in before, before[-3000:]
    assert after.count(" stopped (rc=") == 8
    assert "Traceback" not in output, output[-4000:]
    assert password not in output
    assert not any(ROOT.glob("celerybeat-schedule*"))
