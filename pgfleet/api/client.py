"""How the command line asks a running API (``pgfleet search``, ``pgfleet sql``): at
``PGFLEET_API_URL`` with ``PGFLEET_API_KEY``, else the API that ``pgfleet up`` started under
``PGFLEET_HOME`` (its address in the state file, its key in the credentials file, both
readable by their owner only). Plain :mod:`urllib`: a command that asks the API loads
neither torch nor a model, which is what makes it fast.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgfleet.errors import PgfleetError
from pgfleet.state import read_state

#: a running API answers its socket at once; one that does not is treated as absent
CONNECT_TIMEOUT_S = 0.5


class Unreachable(Exception):
    """No API answers there: the caller does the work itself."""


class ApiRefused(PgfleetError):
    """The API answered with an error (its message is the API's)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Client:
    url: str
    key: str
    timeout_s: float = 60.0

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Authorization": f"Bearer {self.key}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:   # it holds the response's socket
                raise ApiRefused(exc.code, _message(exc)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise Unreachable(str(exc)) from exc

    def reachable(self) -> bool:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", port),
                                          timeout=CONNECT_TIMEOUT_S):
                return True
        except OSError:
            return False


def find(home: Path, environ: dict[str, str] | None = None) -> Client | None:
    """The API to ask, or None when none is configured or running."""
    env = os.environ if environ is None else environ
    if env.get("PGFLEET_API_URL"):
        key = env.get("PGFLEET_API_KEY")
        if not key:
            raise PgfleetError("PGFLEET_API_URL is set but PGFLEET_API_KEY is not: set both "
                               "(pgfleet api-key create NAME makes a key), or neither")
        client = Client(env["PGFLEET_API_URL"], key)
    else:
        state = read_state(home)
        if not state or not state.get("api_url"):
            return None
        key = _local_key(home)
        if key is None:
            return None
        client = Client(state["api_url"], key)
    return client if client.reachable() else None


def _local_key(home: Path) -> str | None:
    try:
        stored = json.loads((home / "credentials.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    key = stored.get("api_key")
    return key if isinstance(key, str) and key else None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"the API answered {exc.code} {exc.reason}"
