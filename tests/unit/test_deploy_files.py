"""docker-compose.yml and the Procfile, checked statically (no Docker engine runs here)."""

import re
import shlex

import yaml

from tests.conftest import ROOT
from workers.queues import ALL_QUEUES


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _check_command(argv: list[str]) -> None:
    """Every command names something this project provides."""
    if argv[0] == "pgfleet":
        from pgfleet.cli import main

        assert argv[1] in main.commands, argv
        if argv[1] in ("flower", "beat", "metrics"):
            return
    elif argv[:3] == ["python", "-m", "producers"]:
        assert (ROOT / "producers" / "__main__.py").exists()
    elif argv[0] == "celery":
        assert argv[1:3] == ["-A", "workers"], argv
        assert argv[3] in ("worker", "flower"), argv
        if argv[3] == "worker":
            queue = argv[argv.index("-Q") + 1]
            assert queue in ALL_QUEUES, queue
    else:
        raise AssertionError(f"unknown command {argv}")


def test_compose_has_every_service_with_real_commands():
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "producer", "worker-gpu", "worker-cpu",
            "worker-training", "flower"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector")
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    for name, service in services.items():
        if "command" in service and name not in ("redis",):
            _check_command(service["command"])
    queues = {s["command"][s["command"].index("-Q") + 1]
              for s in services.values() if "-Q" in s.get("command", [])}
    assert queues == set(ALL_QUEUES)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia"
    assert services["migrate"]["restart"] == "no"


def test_compose_takes_credentials_from_env_not_from_the_file():
    services = _compose()["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    for service in services.values():
        url = service.get("environment", {}).get("PGFLEET_DATABASE_URL")
        if url:
            assert re.search(r":\$\{POSTGRES_PASSWORD[^}]*\}@", url), url
    example = (ROOT / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example


def test_procfile_runs_the_same_processes():
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    commands = dict(line.split(":", 1) for line in lines)
    assert set(commands) == {"producer", "worker_gpu", "worker_cpu", "worker_training", "beat",
                             "flower", "metrics"}
    for command in commands.values():
        _check_command(shlex.split(command.strip()))
