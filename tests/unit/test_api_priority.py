"""The API's niceness (``PGFLEET_API_NICE``): set on the process and, where it leads its own
session as under ``pgfleet up``, on the session's autogroup, which is what Linux weighs
against the fleet's other sessions; never on a terminal session it merely runs in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pgfleet.api.app import autogroup_niceness
from pgfleet.settings import Settings

PROBE = """
import os
from pgfleet.api.app import autogroup_niceness, lower_priority
lower_priority(7)
print(os.nice(0), autogroup_niceness())
"""


def _probe(own_session: bool) -> tuple[str, str]:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60, start_new_session=own_session, check=True)
    niceness, group = run.stdout.split()
    return niceness, group


def test_the_default_is_nice_10():
    assert Settings.from_env({}).api_nice == 10
    assert Settings.from_env({"PGFLEET_API_NICE": "0"}).api_nice == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's niceness")
def test_a_session_leader_sets_its_process_and_its_autogroup():
    before = os.nice(0)
    niceness, group = _probe(own_session=True)
    assert int(niceness) == min(19, before + 7)
    if group != "None":        # autogroups apply to this process
        assert group == "7"


@pytest.mark.skipif(autogroup_niceness() is None,
                    reason="autogroups do not apply here (no kernel support, or a cgroup of its own)")
def test_in_another_session_only_the_process_is_niced():
    mine = str(autogroup_niceness())
    niceness, group = _probe(own_session=False)
    assert int(niceness) >= 7
    assert group == mine       # this test's session (the caller's terminal) is left alone


@pytest.mark.parametrize("text, expected", [
    ("/autogroup-12 nice 5\n", 5),
    ("", None),                        # a process in a container's cgroup: the kernel shows nothing
    ("/autogroup-1 nice x\n", None),
    ("garbage\n", None),
])
def test_the_autogroup_file_is_read_or_left_alone(tmp_path, monkeypatch, text, expected):
    import pgfleet.api.app as app

    fake = tmp_path / "autogroup"
    fake.write_text(text)
    monkeypatch.setattr(app, "AUTOGROUP", fake)
    assert app.autogroup_niceness() == expected
    monkeypatch.setattr(app, "AUTOGROUP", tmp_path / "missing")
    assert app.autogroup_niceness() is None
