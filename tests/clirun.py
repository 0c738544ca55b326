"""The command line in this process: ``pipeline.cli.main`` with its output captured.

What a subprocess would add (interpreter start, imports, a fresh Ray) costs seconds per call and
is exercised by the e2e tier; argument parsing, exit codes and one-line errors are the same here.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from unittest import mock

from pipeline.cli import main


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*argv: str, env: dict[str, str] | None = None) -> CliResult:
    """``e5-embed ARGV`` in-process; ``env`` entries are set for the call only."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch.dict(os.environ, env or {}),
    ):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's usage errors and --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return CliResult(code, out.getvalue(), err.getvalue())
