"""The files a running fleet leaves under ``PGFLEET_HOME``: its state file, and how files
that hold secrets are written.

``pgfleet up`` writes ``fleet.json`` (the servers' URLs with their passwords, and the pids of
its children); every command reads it to find the embedded servers when no URL is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

STATE_FILE = "fleet.json"
#: files that hold secrets are never readable by others
MODE = 0o600


def read_state(home: Path) -> dict | None:
    """The state file of a running embedded fleet, or None (missing, stale or unreadable)."""
    path = home / STATE_FILE
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_state(path: Path, state: dict) -> None:
    # it holds the servers' URLs with their passwords: never readable by others, not even
    # for a moment
    write_private(path, json.dumps(state, indent=2), replace=True)


def write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` without it ever being readable by others: a temporary file
    created with mode 0600, then linked (first creation: fails if another process won) or
    renamed (completing an existing file) into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
