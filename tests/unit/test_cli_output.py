"""What the command modules share to show things: the progress bar of ``pgfleet status`` and
``pgfleet train status``."""

from __future__ import annotations

from pgfleet.cli.output import progress_bar


def test_progress_bar():
    assert progress_bar(5, 10, width=10) == "█████░░░░░  50%"
    assert progress_bar(0, None) == "-"
