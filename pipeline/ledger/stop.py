"""A run asked to stop at a consistent point (``--max-gpu-hours``): a marker in the output.

The driver writes ``_stop`` (behind its lease fence) with the reason; read tasks ask
:class:`StopSignal` between blocks (a listing at most every ``poll_s``) and stop reading, and the
stage actors let batches through empty (Ray Data reads ahead: what was read but not yet worked on
is not worked on). Files in flight are written whole; rows in no file are not done, and the run
ends incomplete; the next run (which removes the marker) reads them again from the footers'
coverage, exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.io.storage import Storage

STOP_MARKER = "_stop"


def request_stop(storage: Storage, fence: Callable[[], None], reason: str) -> None:
    fence()
    storage.write_bytes_atomic(storage.join(STOP_MARKER), reason.encode())


def clear_stop(storage: Storage, fence: Callable[[], None]) -> None:
    """A new run starts: an earlier run's stop request no longer applies."""
    if storage.exists(storage.join(STOP_MARKER)):
        fence()
        storage.delete(storage.join(STOP_MARKER))


@dataclass
class StopSignal:
    """What a read task carries: true once the run asked to stop (checked at most every ``poll_s``)."""

    output_uri: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    poll_s: float = 2.0
    _last: float = field(default=0.0, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._stopped and now - self._last >= self.poll_s:
            self._last = now
            storage = Storage(self.output_uri, self.storage_options)
            storage.forget_listings()
            self._stopped = storage.exists(storage.join(STOP_MARKER))
        return self._stopped
