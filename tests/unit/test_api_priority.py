"""The API's niceness (``PGFLEET_API_NICE``): set on the process and, where it leads its own
session as under ``pgfleet up``, on the session's autogroup, which is what Linux weighs
against the fleet's other sessions; never on a terminal session it merely runs in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgfleet.settings import Settings

PROBE = """
import os
from pathlib import Path
from pgfleet.api.app import lower_priority
lower_priority(7)
group = Path("/proc/self/autogroup")
print(os.nice(0), group.read_text().split()[-1] if group.exists() else "none")
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
    if Path("/proc/self/autogroup").exists():
        assert group == "7"


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups")
def test_in_another_session_only_the_process_is_niced():
    mine = Path("/proc/self/autogroup").read_text().split()[-1]
    niceness, group = _probe(own_session=False)
    assert int(niceness) >= 7
    assert group == mine       # this test's session (the caller's terminal) is left alone
