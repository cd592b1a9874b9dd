"""Typed options of a training job, and the one check they go through.

An :class:`Option` says what a job accepts (type, default, range, choices) and how the
``pgfleet train`` command shows it (flag, help, whether its help shows the default and the
range). :func:`check_options` is the only check of a job's options: the Celery task, the
command (``--local`` or queued) and a direct call of the library all go through it, so every
rule holds the same way everywhere. Nothing here imports Celery, click or a model library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pgfleet.errors import PgfleetError

#: ``Option.cli_unset`` of an option the command always sends
ALWAYS_SENT: Any = object()

#: a rule across options: (checked options, options as given) -> what is wrong, or None
Rule = Callable[[dict[str, Any], Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Option:
    """One option of a training job."""

    type: type
    default: Any
    help: str | None = None
    #: bounds of a number (``min_open``/``max_open``: the bound itself is out)
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    multiple_of: int | None = None
    #: the values a string may take
    choices: tuple[str, ...] = ()
    #: a string that must not be blank ("must not be empty")
    nonblank: bool = False
    #: a string that must be given, not blank; the command requires the flag
    required: bool = False
    #: why: added to the message of a broken bound, or what a required option is
    why: str = ""
    #: an int stands for the string (a version id: 3 for "3")
    accepts_id: bool = False
    # ---- how the command shows it
    #: the command's flag (default: ``--`` and the name with dashes)
    flag: str = ""
    #: offered by the command (else only to the library and ``celery call``)
    cli: bool = True
    show_default: bool = False
    #: the command's type carries the range, and its help shows it; else only the check
    #: after parsing applies it
    cli_range: bool = True
    #: the command's default when it means "not given": that value is not sent
    cli_unset: Any = ALWAYS_SENT

    def problem(self, name: str, value: Any) -> str | None:
        """What is wrong with this (well-typed) value, or None."""
        if self.choices and value not in self.choices:
            return f"{name} must be one of {list(self.choices)}, not {value!r}"
        if self.type is str and not value.strip():
            if self.required:
                return f"{name} is required" + (f": {self.why}" if self.why else "")
            if self.nonblank:
                return f"{name} must not be empty"
        if self.type in (int, float):
            broken = self._broken_bound(value)
            if broken:
                why = f" ({self.why})" if self.why else ""
                return f"{name} {broken}{why}, not {value}"
            if self.multiple_of and value % self.multiple_of:
                return f"{name} must be a multiple of {self.multiple_of}, not {value}"
        return None

    def _broken_bound(self, value: float) -> str | None:
        low, high = self.min, self.max
        below = low is not None and (value <= low if self.min_open else value < low)
        above = high is not None and (value >= high if self.max_open else value > high)
        if not (below or above):
            return None
        if low is not None and high is not None and self.type is float:
            if self.min_open == self.max_open:
                return f"must be between {low} and {high}"
            return (f"must be in {'(' if self.min_open else '['}{low}, "
                    f"{high}{')' if self.max_open else ']'}")
        if below:
            if low == 0:
                return "must be positive" if self.min_open else "must not be negative"
            return f"must be more than {low}" if self.min_open else f"must be at least {low}"
        return f"must be less than {high}" if self.max_open else f"must be at most {high}"


def check_options(task: str, given: Mapping[str, Any], options: Mapping[str, Option],
                  rules: tuple[Rule, ...] = ()) -> dict[str, Any]:
    """``given`` with the defaults of ``options`` filled in, each of its type and within its
    rules, or a clear error naming the option (the first wrong one, in the options' order:
    unknown names, then types, then each option's rule, then ``rules`` across options). An
    int stands for a float."""
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise PgfleetError(f"{task}: unknown option(s) {unknown}; known: {sorted(options)}")
    checked: dict[str, Any] = {}
    for name, option in options.items():
        value, kind = given.get(name, option.default), option.type
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind is str and is_int and option.accepts_id:
            value = str(value)
        if kind is float and is_int:
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise PgfleetError(f"{task}: option {name} must be {kind.__name__}, "
                               f"not {type(value).__name__} ({value!r})")
        checked[name] = value
    for name, option in options.items():
        problem = option.problem(name, checked[name])
        if problem:
            raise PgfleetError(f"{task}: {problem}")
    for rule in rules:
        problem = rule(checked, given)
        if problem:
            raise PgfleetError(f"{task}: {problem}")
    return checked
