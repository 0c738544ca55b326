"""A stage wrapped for Ray Data: built once per actor, each batch's rows and time reported, and
batches let through empty once the run asked itself to stop (its budget)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipeline.backend.progress import Telemetry
from pipeline.stages.spec import ENCODE


class TimedStage:
    """Wraps a stage for Ray: builds it once per actor and reports each batch's rows and time."""

    stage_name = "stage"

    def __init__(
        self, stage_cls: type, telemetry: Telemetry | None, stop: Callable[[], bool] | None = None, **kwargs: Any
    ):
        self.stage = stage_cls(**kwargs)
        # the run's stop request (StopSignal): past it, a batch read ahead is not worked on; its rows
        # reach no file, so the next run reads them again (the footers are the record of what is done)
        self.stop = stop
        setup = getattr(self.stage, "setup", None)
        if setup is not None:  # the expensive part (weights, compilation) when the actor starts
            setup()
        self.telemetry = telemetry
        self._oom_seen = 0
        self._called = False

    def __call__(self, batch):
        if self.telemetry is not None and not self._called:
            self._called = True
            self.telemetry.seen(self.stage_name)
        if self.stop is not None and self.stop():
            return self.stage(batch.slice(0, 0))  # the stage's own schema, no rows
        started = time.time()
        out = self.stage(batch)
        if self.telemetry is not None:
            oom = int(getattr(self.stage, "oom_splits", 0))
            tokens = _tokens(out) if self.stage_name == ENCODE else 0
            clock = getattr(self.stage, "clock", None)  # the encoder's own time split (EncoderClock)
            self.telemetry.stage_batch(
                self.stage_name,
                batch.num_rows,
                started,
                time.time(),
                oom - self._oom_seen,
                tokens,
                extra=clock.take() if clock is not None else None,
            )
            self._oom_seen = oom
        return out


def _tokens(table) -> int:
    """The tokens a batch's ``n_tokens`` column holds (per row, or per window in chunked runs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "n_tokens" not in table.column_names:
        return 0
    column = table["n_tokens"]
    if pa.types.is_list(column.type):
        column = pc.list_flatten(column)
    return int(pc.sum(column).as_py() or 0)


def timed(stage_cls: type, role: str) -> type:
    """A TimedStage subclass named after the stage (Ray Data names operators by class), reporting as
    its ``role``."""
    return type(stage_cls.__name__, (TimedStage,), {"stage_name": role, "__module__": __name__})
