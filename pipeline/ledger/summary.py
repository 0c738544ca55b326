"""What ``run_job`` returns: the outcome, and the run's own record for its counters (kept once, in
``RunRecord``), as one line for the log and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.ledger.manifest import RunRecord


@dataclass(kw_only=True)
class RunSummary:
    """What ``run_job`` returns: the outcome, and the run's own record for its counters (kept once,
    in ``RunRecord``; None for a no-op, whose counters are all 0)."""

    status: str  # complete | noop (a run that does not complete raises: JobError, UsageError)
    output: str
    run: RunRecord | None = None
    duplicate_ids: int = 0
    message: str = ""
    published: str = ""  # the Iceberg snapshot that now describes the output, if it is published

    def _count(self, name: str) -> Any:
        return getattr(self.run, name) if self.run is not None else 0

    rows_embedded = property(lambda self: self._count("rows_embedded"))
    rows_rejected = property(lambda self: self._count("rows_rejected"))
    rows_skipped = property(lambda self: self._count("rows_skipped"))
    rows_reused = property(lambda self: self._count("rows_reused"))  # vectors carried over (--update, --reuse-from)
    rows_removed = property(lambda self: self._count("rows_removed"))  # earlier rows not carried over
    tokens = property(lambda self: self._count("tokens"))
    wall_s = property(lambda self: self._count("wall_s"))
    docs_per_s = property(lambda self: self._count("docs_per_s"))
    tokens_per_s = property(lambda self: self._count("tokens_per_s"))

    def line(self) -> str:
        if self.status == "noop":
            line = f"e5-embed: {self.output} is already complete; nothing to do ({self.message})"
            return line + (f"; {self.published}" if self.published else "")
        return (
            f"e5-embed: {self.status}: {self.rows_embedded} rows embedded, {self.rows_rejected} rejected, "
            f"{self.rows_skipped} already done, "
            + (
                f"{self.rows_reused} reused, {self.rows_removed} removed, "
                if self.rows_reused or self.rows_removed
                else ""
            )
            + f"{self.tokens} tokens in {self.wall_s:.1f}s "
            f"({self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s)"
            + (f", {self.duplicate_ids} duplicate ids" if self.duplicate_ids else "")
            + f" -> {self.output}"
            + (f"; {self.published}" if self.published else "")
        )
