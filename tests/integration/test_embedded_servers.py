"""The embedded default is not open: password logins only, secrets in a private file, and
servers that a supervisor starts again (same port, data and password) when they die."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def _with_password(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    auth = f"{user}:{password}@" if password is not None else f"{user}@"
    return parts._replace(netloc=auth + host).geturl()


def test_the_embedded_postgres_takes_password_logins_only(services, conn):
    for password in (None, "", "guess"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_with_password(services.database_url, password),
                            connect_timeout=5).close()
    # no Unix socket, no trust line, SCRAM for what is stored
    assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == ""
    rules = conn.execute("SELECT DISTINCT type, auth_method FROM pg_hba_file_rules").fetchall()
    assert rules == [("host", "scram-sha-256")], rules
    stored = conn.execute("SELECT rolname, left(rolpassword, 14) FROM pg_authid "
                          "WHERE rolpassword IS NOT NULL ORDER BY 1").fetchall()
    assert stored and all(secret == "SCRAM-SHA-256$" for _, secret in stored), stored


def test_the_reader_login_has_no_privilege_beyond_the_reader(services):
    with psycopg.connect(services.reader_url, autocommit=True) as reader:
        row = reader.execute("SELECT session_user, rolsuper, rolcreaterole, rolcreatedb, "
                             "rolreplication, rolbypassrls FROM pg_roles "
                             "WHERE rolname = session_user").fetchone()
        assert row == ("pgfleet_reader", False, False, False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT rolname FROM pg_authid")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT count(*) FROM pending_embeddings")


def test_the_embedded_redis_requires_its_password(services):
    import redis

    for password in (None, "guess"):
        url = _with_password(services.redis_url, password)
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            client = redis.Redis.from_url(url, socket_timeout=5)
            try:
                client.ping()
            finally:
                client.close()
    client = redis.Redis.from_url(services.redis_url, socket_timeout=5)
    assert client.ping()
    assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
    client.close()


def test_credentials_are_generated_once_in_a_private_file(tmp_path):
    from pgfleet.ops import credentials

    previous = os.umask(0)  # even a careless umask cannot make the file readable by others
    try:
        first = credentials.load_or_create(tmp_path)
        path = credentials.path_for(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert credentials.load_or_create(tmp_path) == first
        values = list(credentials.as_dict(first).values())
        assert len(set(values)) == len(values) and all(len(v) >= 20 for v in values)

        # a file from an older release lacks a secret: it is completed, the others are kept
        data = json.loads(path.read_text())
        del data["flower_password"]
        path.write_text(json.dumps(data))
        path.chmod(0o644)
        again = credentials.load_or_create(tmp_path)
        assert again.postgres_password == first.postgres_password
        assert again.flower_password and again.flower_password != first.flower_password
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".credentials")]
    finally:
        os.umask(previous)


def test_flower_password_is_shown_on_a_terminal_only(tmp_path):
    from pgfleet.ops import credentials
    from pgfleet.ops.fleet import _announce_flower
    from pgfleet.settings import Settings

    secrets = credentials.load_or_create(tmp_path)
    conf = Settings(home=tmp_path)
    for show, expected in ((True, True), (False, False)):
        said: list[str] = []
        env: dict[str, str] = {}
        _announce_flower(env, 5555, secrets, conf, said.append, show)
        assert env["PGFLEET_FLOWER_PASSWORD"] == secrets.flower_password
        assert (secrets.flower_password in said[0]) is expected
        assert "credentials.json" in said[0]


def _supervise_until_restarted(server, timeout_s: float = 90.0):
    from pgfleet.ops.supervisor import ChildSpec, Supervisor

    supervisor = Supervisor([], env=dict(os.environ), log_dir=server.log.parent)
    supervisor.adopt(ChildSpec(server.name, [], launch=server.restart), server.process,
                     server.log)
    old = server.process
    os.kill(old.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted():
        supervisor.poll()
        child = supervisor.children[0]
        return child.process is not None and child.process.pid != old.pid

    wait_until(restarted, timeout_s, interval_s=0.1, message=f"{server.name} restarted")
    assert old.poll() is not None  # reaped: no defunct child is left
    assert supervisor.children[0].history == [-signal.SIGKILL]
    return time.monotonic() - killed_at


def test_a_killed_embedded_redis_is_started_again_with_its_port_and_password(tmp_path):
    import redis

    from pgfleet.ops.services import EmbeddedRedis

    server = EmbeddedRedis(tmp_path, password="s3cret-r")
    url = server.start()
    try:
        took_s = _supervise_until_restarted(server)
        assert server.url == url and took_s < 10
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.ping()
        client.close()
    finally:
        server.stop()


def test_a_killed_embedded_postgres_is_started_again_with_its_data_and_password(tmp_path):
    from pgfleet.ops.services import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path, password="s3cret-p")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        took_s = _supervise_until_restarted(server)
        assert server.url == url and took_s < 60
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchone() == (42,)
    finally:
        server.stop()


def test_a_data_directory_made_with_trust_is_secured_before_it_listens(tmp_path):
    """Homes made by earlier releases (initdb --auth=trust) or whose credentials file was
    lost: the server takes the current password, and nothing else, from its first start."""
    import shutil

    from pgfleet.ops.services import EmbeddedPostgres

    first = EmbeddedPostgres(tmp_path, password="0ld-one")
    first._prepare()
    hba = first.data / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n")
    if first._system_user:
        shutil.chown(hba, first._system_user, first._system_user)
    first.auth_marker.unlink()

    server = EmbeddedPostgres(tmp_path, password="n3w-one")
    url = server.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        for password in (None, "0ld-one"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(_with_password(url, password), connect_timeout=5).close()
    finally:
        server.stop()
