"""How a setting is declared: once, as a dataclass field that carries its flag (help, type, check,
choices, the commands it belongs to).

``JobConfig`` (the ``run`` settings) and ``PlanOptions`` (what only ``plan`` takes) declare their fields
with ``setting(...)``; ``pipeline.flags`` generates the parsers, the ``E5_EMBED_*`` variables, the
job-file keys and ``docs/flags.md`` from those fields (``flags_of``), and ``validate`` runs each field's
check. Nothing else names a setting's default, help or check.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError

Check = Callable[[str, Any], None]


def int_range(low: int, high: int) -> Check:
    def check(flag: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UsageError(f"--{flag} must be an integer in [{low}, {high}]; got {value!r}")

    return check


def seconds(*, allow_zero: bool) -> Check:
    def check(flag: str, value: Any) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or not (value >= 0 if allow_zero else value > 0):
            raise UsageError(f"--{flag} must be a number of seconds {'>= 0' if allow_zero else '> 0'}; got {value!r}")

    return check


def positive_number(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UsageError(f"--{flag} must be > 0, got {value!r}")


def fraction(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"--{flag} must be within [0, 1], got {value!r}")


def boolean(flag: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"--{flag} must be true or false; got {value!r}")


def one_of(valid: Sequence[str]) -> Check:
    def check(flag: str, value: Any) -> None:
        if value not in valid:
            raise UsageError(f"--{flag} must be one of {', '.join(valid)}; got {value!r}")

    return check


def token_buckets(text: str) -> tuple[int, ...]:
    """``128,256,512`` -> (128, 256, 512)."""
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"comma-separated token counts, e.g. 128,256,512; got {text!r}") from e


def ascending_buckets(flag: str, value: Any) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok or any(v < 8 for v in value) or list(value) != sorted(set(value)):
        raise UsageError(f"--{flag} must be ascending token counts >= 8, e.g. 128,256,512; got {value!r}")


def not_empty(flag: str, value: Any) -> None:
    if not value:
        raise UsageError(f"--{flag} must not be empty")


RUN, PLAN = frozenset({"run"}), frozenset({"plan"})
BOTH = RUN | PLAN


@dataclass(frozen=True)
class Flag:
    name: str  # without the leading dashes
    help: str
    type: Callable[[str], Any] | None = str  # None: an on/off switch
    default: Any = None
    choices: tuple[str, ...] | None = None
    check: Check | None = None  # applied when the value is not None
    commands: frozenset[str] = frozenset({"run"})
    dest: str = ""  # the field it sets; default: the name with underscores
    metavar: str | None = None
    repeat: bool = False
    negate: bool = False  # --no-x sets dest to False

    @property
    def field(self) -> str:
        return self.dest or self.name.replace("-", "_")

    def validate(self, value: Any) -> None:
        if value is not None and self.check is not None:
            self.check(self.name, value)


@dataclass(frozen=True)
class _FlagSpec:
    """What ``setting`` records on a field (the flag's name and default come from the field)."""

    help: str
    type: Callable[[str], Any] | None = str
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    commands: frozenset[str] = RUN
    metavar: str | None = None
    repeat: bool = False
    negate: bool = False
    name: str | None = None  # the flag, when it is not the field's name with dashes


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **flag: Any) -> Any:
    """A dataclass field declared with its flag: ``max_length: int = setting(512, help=..., type=int,
    check=int_range(8, 8192), commands=BOTH)``. No default: a required setting."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"flag": _FlagSpec(**flag)})


def flags_of(cls: type) -> tuple[Flag, ...]:
    """The flags a settings dataclass declares, in field order."""
    found = []
    for f in dataclasses.fields(cls):
        spec: _FlagSpec | None = f.metadata.get("flag")
        if spec is None:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        found.append(
            Flag(
                spec.name or f.name.replace("_", "-"),
                spec.help,
                type=spec.type,
                default=default,
                choices=spec.choices,
                check=spec.check,
                commands=spec.commands,
                dest=f.name,
                metavar=spec.metavar,
                repeat=spec.repeat,
                negate=spec.negate,
            )
        )
    return tuple(found)


def validate(cls: type, values: dict[str, Any]) -> None:
    """Run each declared field's check on the values given (by field name)."""
    for flag in flags_of(cls):
        if flag.field in values:
            flag.validate(values[flag.field])
