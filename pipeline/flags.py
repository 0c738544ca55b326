"""The command line, the environment and the docs, generated from the settings' one declaration.

Every setting is a field of ``JobConfig`` (``run``; ``plan`` too where its flag says so) or of
``PlanOptions`` (``plan`` only), declared with ``pipeline.settings.setting``: its help, type, check,
choices and commands live there. Here the flag table is derived from those fields (``FLAGS``), and
from it the parsers (``add_flags``), the ``E5_EMBED_<FIELD>`` variables (``from_env``) and
``docs/flags.md`` (``markdown_table``; a test keeps the file equal). Job-file keys are the flag names.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from pipeline.errors import UsageError
from pipeline.options import GROUPS, PlanOptions
from pipeline.settings import Flag, flags_of

FLAGS: tuple[Flag, ...] = tuple(f for group in GROUPS.values() for f in flags_of(group)) + flags_of(PlanOptions)


def option(flag: Flag) -> str:
    return f"--no-{flag.name}" if flag.negate else f"--{flag.name}"


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the command's flags. For ``run`` nothing has a parser default, so a ``--config`` job
    file's values are overridden only by flags actually given; for ``plan`` defaults apply."""
    for flag in FLAGS:
        if command not in flag.commands:
            continue
        default = argparse.SUPPRESS if command == "run" else flag.default
        kw: dict[str, Any] = {"dest": flag.field, "default": default, "help": _help(flag)}
        if flag.type is None:
            kw["action"] = "store_false" if flag.negate else "store_true"
        else:
            kw.update(type=flag.type, metavar=flag.metavar)
            if flag.choices:
                kw["choices"] = flag.choices
            if flag.repeat:
                kw["action"] = "append"
        parser.add_argument(option(flag), **kw)


def _help(flag: Flag) -> str:
    if flag.type is None or flag.default in (None, ()):
        return flag.help
    return f"{flag.help} (default {flag.default})"


def markdown_table() -> str:
    """The flag reference for docs/flags.md."""
    lines = ["| flag | `run` (its environment variable) | `plan` | default | what |", "|---|---|---|---|---|"]
    for flag in FLAGS:
        default = "" if flag.default in (None, ()) or flag.type is None else f"`{flag.default}`"
        if flag.choices:
            default += f" ({' / '.join(flag.choices)})"
        what = flag.help.replace("|", "\\|")
        env = f"`{env_name(flag)}`" if "run" in flag.commands else ""
        lines.append(f"| `{option(flag)}` | {env} | {'✓' if 'plan' in flag.commands else ''} | {default} | {what} |")
    return "\n".join(lines) + "\n"


ENV_PREFIX = "E5_EMBED_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_name(flag: Flag) -> str:
    return ENV_PREFIX + flag.field.upper()


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``run`` settings from ``E5_EMBED_<FIELD>`` variables (``E5_EMBED_MAX_LENGTH=256``,
    ``E5_EMBED_INPUTS='["s3://a/", "s3://b/"]'`` or one URI, ``E5_EMBED_OVERWRITE=true``)."""
    values: dict[str, Any] = {}
    for flag in FLAGS:
        raw = environ.get(env_name(flag))
        if "run" not in flag.commands or raw is None:
            continue
        try:
            if flag.type is None:
                low = raw.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError(f"expected true or false, got {raw!r}")
                values[flag.field] = low in _TRUE
            elif flag.repeat:
                parsed = json.loads(raw) if raw.lstrip().startswith("[") else [raw]
                values[flag.field] = [flag.type(v) for v in parsed]
            else:
                values[flag.field] = flag.type(raw)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{env_name(flag)}: {e}") from e
    return values
