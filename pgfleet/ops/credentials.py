"""The embedded default's secrets: generated at first start, kept in one file only its owner
can read.

``$PGFLEET_HOME/credentials.json`` (mode 0600 from the moment it exists: it is written to a
new file opened with that mode, then linked into place) holds the passwords of the embedded
PostgreSQL's superuser, of the ``pgfleet_reader`` login that guarded SQL runs as, of the
``pgfleet_fleet`` login most of the fleet's processes run as, of the embedded Redis
(``requirepass``) and of Flower, and the HTTP API key the command line uses to ask the
API that ``pgfleet up`` runs (stored in the database as its hash only, named
``pgfleet-local``). They are generated with :mod:`secrets`, kept
across restarts, and never logged: URLs in logs go through
:func:`pgfleet.settings.redact`.
"""

from __future__ import annotations

import json
import logging
import secrets
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pgfleet.errors import ConfigurationError
from pgfleet.state import MODE, write_private

logger = logging.getLogger(__name__)

FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    postgres_password: str
    reader_password: str
    fleet_password: str
    redis_password: str
    flower_password: str
    api_key: str


def new_secret() -> str:
    """128 random bits, URL-safe (no character needs quoting in a URL)."""
    return secrets.token_urlsafe(16)


def _generate(name: str) -> str:
    from pgfleet.api.keys import new_key

    return new_key() if name == "api_key" else new_secret()


def path_for(home: Path) -> Path:
    return home / FILE_NAME


def load_or_create(home: Path) -> Credentials:
    """The home's credentials, created (or completed, when a newer release added one) on the
    first call. Safe against a concurrent first start: one file wins, both read it."""
    home.mkdir(parents=True, exist_ok=True)
    path = path_for(home)
    stored = _read(path)
    names = [f.name for f in fields(Credentials)]
    if stored is not None and all(isinstance(stored.get(n), str) and stored[n] for n in names):
        return Credentials(**{n: stored[n] for n in names})
    values = {n: (stored or {}).get(n) or _generate(n) for n in names}
    write_private(path, json.dumps(values, indent=2) + "\n", replace=stored is not None)
    final = _read(path)
    if final is None:
        raise ConfigurationError(f"could not create {path}")
    if stored is None:
        logger.info("generated credentials for the embedded servers in %s (mode 0600)", path)
    return Credentials(**{n: final[n] for n in names})


def _read(path: Path) -> dict | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning("%s could be read by others (mode %o); making it private (0600)",
                       path, stat.S_IMODE(info.st_mode))
        path.chmod(MODE)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} is unreadable ({exc}); move it away to generate new "
                                 "credentials (the embedded servers then get new passwords)"
                                 ) from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object")
    return data


def as_dict(credentials: Credentials) -> dict[str, str]:
    return asdict(credentials)
