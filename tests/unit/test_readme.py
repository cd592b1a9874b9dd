"""The README documents what a person configures: every PGFLEET_ variable the code reads is in
its settings table, and every command it names in its quickstart exists."""

from __future__ import annotations

import dataclasses
import re

from tests.conftest import ROOT

#: names in the code that look like variables but are not read from the environment
NOT_VARIABLES = {"PGFLEET_TABLES"}


def _settings_section() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    start = text.index("\n## Settings")
    return text[start:text.index("\n## ", start + 1)]


def _read_variables() -> set[str]:
    from pgfleet.settings import PREFIX, Settings

    names = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    for folder in ("workers", "pgfleet", "producers", "schema"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"PGFLEET_[A-Z][A-Z_]*[A-Z]", path.read_text("utf-8")))
    return names - NOT_VARIABLES


def test_every_variable_is_in_the_settings_table():
    table = _settings_section()
    missing = sorted(name for name in _read_variables()
                     if f"`{name.removeprefix('PGFLEET_')}`" not in table)
    assert not missing, f"README settings table lacks {missing}"


def test_the_readme_has_what_an_operator_looks_for():
    text = (ROOT / "README.md").read_text("utf-8")
    for heading in ("## Quickstart", "## Running in production", "## Scaling out",
                    "## Troubleshooting", "## Settings"):
        assert f"\n{heading}\n" in text, heading
    assert "```mermaid" in text
    assert "make run" in text and "make test" in text
    ci = (ROOT / ".ci/run").read_text("utf-8")
    assert "make test" in ci
