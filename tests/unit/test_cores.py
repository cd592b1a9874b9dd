"""The free-cores gauge the API's engine widens and narrows by: the rule, and the sampler
against a real process that keeps one core busy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pgfleet.api.cores import FreeCores, free_cores
from tests.conftest import wait_until


@pytest.mark.parametrize(("cores", "others", "free"), [
    (2, 0.0, 2), (2, 0.3, 2), (2, 0.5, 2),   # PostgreSQL answering the API: still free
    (2, 0.7, 1), (2, 1.0, 1), (2, 2.0, 1),   # a worker embedding: one core left, never 0
    (4, 1.0, 3), (4, 2.2, 2), (1, 0.0, 1)])
def test_free_cores_leaves_at_least_one(cores, others, free):
    assert free_cores(cores, others) == free


def test_the_gauge_sees_another_process_take_a_core_and_give_it_back():
    gauge = FreeCores(cores=2, interval_s=0.05)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        wait_until(lambda: gauge() == 1, 10, interval_s=0.05,
                   message="a core taken by another process")
        assert gauge.others_busy > 0.6
    finally:
        burner.kill()
        burner.wait()
    try:
        wait_until(lambda: gauge() == 2, 15, interval_s=0.05, message="the core given back")
    finally:
        gauge.close()
