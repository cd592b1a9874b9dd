"""docker-compose.yml and the Procfile, checked statically (no Docker engine runs here):
the services, their commands (each must resolve to something this project provides, options
included), healthchecks, restart policies, volumes and credentials."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib

import click
import pytest
import yaml

from tests.conftest import ROOT
from workers.queues import ALL_QUEUES

FLEET = {"producer", "worker-gpu", "worker-cpu", "worker-training", "beat", "flower", "metrics",
         "api"}
#: long-running services with nothing to probe: their process is the container's, so a
#: crash restarts it (and the metrics show a stuck producer)
UNPROBED = {"producer", "beat"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _procfile() -> dict[str, str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {name.strip(): command.strip()
            for name, command in (line.split(":", 1) for line in lines)}


def _resolve_pgfleet(args: list[str]) -> click.Context:
    """Parse a ``pgfleet ...`` command line as the real command would (no side effects)."""
    from pgfleet.cli import main

    command: click.Command = main
    parent = click.Context(main, info_name="pgfleet")
    while isinstance(command, click.Group):
        assert args and args[0] in command.commands, f"pgfleet has no command {args[:1]}"
        name, args = args[0], args[1:]
        command = command.commands[name]
        if isinstance(command, click.Group):
            parent = click.Context(command, info_name=name, parent=parent)
    return command.make_context(name, list(args), parent=parent)


def _resolve_celery(args: list[str]) -> click.Context:
    """Parse a ``celery -A workers SUB ...`` command line with Celery's own parser."""
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    assert args[:2] == ["-A", "workers"], args
    app = find_app("workers")
    assert app.main == "pgfleet"
    assert args[2] in celery.commands, f"celery has no command {args[2]}"
    parent = click.Context(celery, info_name="celery",
                           obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True))
    return celery.commands[args[2]].make_context(args[2], list(args[3:]), parent=parent)


def resolve(argv: list[str]) -> click.Context | None:
    """Every command names something this project provides, with options it accepts."""
    if argv[0] == "pgfleet":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["pgfleet"] == "pgfleet.cli:main"
        return _resolve_pgfleet(argv[1:])
    if argv[0] == "celery":
        ctx = _resolve_celery(argv[1:])
        if argv[3] == "worker":
            assert set(ctx.params["queues"]) <= set(ALL_QUEUES), ctx.params["queues"]
        return ctx
    if argv[:2] == ["python", "-m"]:
        top = importlib.util.find_spec(argv[2].split(".")[0])
        assert top is not None, f"no module {argv[2]}"
        assert importlib.util.find_spec(argv[2] + ".__main__") is not None, argv
        return None
    raise AssertionError(f"unknown command {argv}")


def _queues(commands: list[list[str]]) -> set[str]:
    return {q for argv in commands if argv[0] == "celery" and argv[3] == "worker"
            for q in resolve(argv).params["queues"]}


def test_the_resolver_rejects_what_does_not_exist():
    for argv in (["pgfleet", "nope"], ["pgfleet", "metrics", "--bogus"],
                 ["pgfleet", "db", "nope"], ["celery", "-A", "workers", "worker", "--bogus"],
                 ["celery", "-A", "workers", "worker", "-Q", "no.such.queue"],
                 ["python", "-m", "no_such_module"], ["sh", "-c", "true"]):
        with pytest.raises((AssertionError, click.UsageError)):
            resolve(argv)


# ---------------------------------------------------------------------- docker-compose.yml
def test_compose_has_every_service():
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate"} | FLEET
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["redis"]["image"].startswith("redis:")
    for name in FLEET | {"migrate"}:
        assert services[name]["image"] == "pgfleet:latest" and services[name]["build"] == "."


def test_every_command_a_service_runs_exists_in_the_project():
    services = _compose()["services"]
    commands = []
    for name in FLEET | {"migrate"}:
        argv = services[name]["command"]
        assert isinstance(argv, list), f"{name}: exec form, so signals reach the process"
        resolve(argv)
        commands.append(argv)
    assert _queues(commands) == set(ALL_QUEUES)
    assert services["migrate"]["command"] == ["pgfleet", "db", "migrate", "--reader-login"]
    assert [n for n in FLEET if services[n]["command"][:2] == ["pgfleet", "beat"]] == ["beat"]


def test_healthchecks_probe_what_each_service_does():
    services = _compose()["services"]
    for name in {"postgres", "redis", "flower", "metrics", "api", "worker-gpu", "worker-cpu",
                 "worker-training"}:
        check = services[name].get("healthcheck")
        assert check and check["test"] and check["interval"] and check["retries"], name
    assert not UNPROBED & {n for n, s in services.items() if "healthcheck" in s}
    for name in ("worker-gpu", "worker-cpu", "worker-training"):
        kind, script = services[name]["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        argv = shlex.split(script.replace("$$(hostname)", "HOST"))
        ctx = resolve(argv)  # celery -A workers inspect ping -d NODE@HOST
        node = argv[argv.index("-d") + 1]
        worker_argv = services[name]["command"]
        assert node.split("@")[0] == worker_argv[worker_argv.index("-n") + 1].split("@")[0]
        assert ctx.params["command"] == "ping" and ctx.params["destination"] == [node]
    for name, port in (("flower", 5555), ("metrics", 5556), ("api", 8000)):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in test
        assert f"--port={port}" in services[name]["command"]


def test_dependencies_and_restart_policies():
    services = _compose()["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in FLEET | {"postgres", "redis"}:
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    for name in FLEET:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_the_gpu_worker_reserves_an_nvidia_gpu():
    devices = _compose()["services"]["worker-gpu"]["deploy"]["resources"]["reservations"][
        "devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_state_lives_in_named_volumes():
    compose = _compose()
    services, named = compose["services"], set(compose["volumes"])
    mounts = {name: {v.split(":")[0]: v.split(":")[1] for v in s.get("volumes", [])}
              for name, s in services.items()}
    for name, by_volume in mounts.items():
        assert set(by_volume) <= named, f"{name} mounts a host path: {by_volume}"
    assert mounts["postgres"] == {"pgdata": "/var/lib/postgresql/data"}
    assert mounts["redis"] == {"redisdata": "/data"}
    env = services["beat"]["environment"]
    assert mounts["beat"] == {"beatstate": env["PGFLEET_HOME"]}
    # trained models are written by the training worker and loaded by the others
    for name in ("worker-gpu", "worker-cpu", "worker-training"):
        assert mounts[name] == {"models": env["PGFLEET_MODELS_DIR"]}
    # the image makes those directories the unprivileged user's, so new volumes are too
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER nobody" in dockerfile and env["PGFLEET_MODELS_DIR"] in dockerfile


def _variables(text: str) -> dict[str, str]:
    """``${NAME...}`` references: {name: what follows the name}."""
    return dict(re.findall(r"\$\{(\w+)([^}]*)\}", text))


def test_credentials_come_from_the_env_file_with_a_committed_example():
    text = (ROOT / "docker-compose.yml").read_text()
    services = _compose()["services"]
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    references = _variables(text)
    # every variable the file uses is in the example, and the secrets are required
    assert set(references) <= set(example), set(references) - set(example)
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "READER_PASSWORD",
                   "PGFLEET_FLOWER_PASSWORD"):
        assert references[secret].startswith(":?"), secret
    # no credential is written in the file itself
    for service in services.values():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH", key):
                assert str(value).startswith("${"), key
            literal = re.sub(r"\$\{[^}]*\}", "", str(value))  # what is not from .env
            assert not re.search(r"://[^/@]*:[^/@]+@", literal), key
    for name in FLEET | {"migrate"}:
        env = services[name]["environment"]
        assert re.search(r":\$\{POSTGRES_PASSWORD[^}]*\}@", env["PGFLEET_DATABASE_URL"])
        assert re.search(r":\$\{REDIS_PASSWORD[^}]*\}@", env["PGFLEET_REDIS_URL"])
        assert re.search(r"^postgresql://pgfleet_reader:\$\{READER_PASSWORD[^}]*\}@",
                         env["PGFLEET_READER_URL"])
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["command"])
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


# ---------------------------------------------------------------------------------- Procfile
def test_procfile_runs_the_same_processes():
    commands = _procfile()
    assert {name.replace("_", "-") for name in commands} == FLEET
    argvs = [shlex.split(command) for command in commands.values()]
    for argv in argvs:
        resolve(argv)
    assert _queues(argvs) == set(ALL_QUEUES)
    # the same worker options as the compose file and `pgfleet up`
    services = _compose()["services"]
    for name in ("worker-gpu", "worker-cpu", "worker-training"):
        procfile = resolve(shlex.split(commands[name.replace("-", "_")])).params
        compose = resolve(services[name]["command"]).params
        for option in ("queues", "concurrency", "prefetch_multiplier", "disable_prefetch",
                       "without_gossip", "without_mingle", "task_events"):
            assert procfile[option] == compose[option], (name, option)
