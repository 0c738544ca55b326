"""Where an encode actor's time goes, from its own clocks: waiting for input, host-to-device copy,
compute, device-to-host copy, and the host's own work while the device had nothing queued.

Per micro-batch four marks are recorded on the device's timeline: before the copy to the device,
after it (the forward starts), after pooling (the copy back starts), after the copy back. On CUDA
they are CUDA events (``enable_timing``), resolved when the micro-batch's result is waited for
anyway (no extra synchronisation); on CPU every operation runs to completion where it is called,
so the marks are the host's ``perf_counter``. Around each call (one Ray batch) the host clock says
how long the actor waited for that batch since its previous one returned.

``take()`` hands over what accumulated since the last call (seconds as integer microseconds,
micro-batch and token counts), which ``TimedStage`` reports with the batch: they add up over every
actor of the run (``pipeline.backend.timeline``: the encoder's side of the timeline; the status
line's busy share).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# what take() hands over: progress keys (integers, summed over actors)
KEYS = (
    "encoder_wait_us",  # the actor idle between two calls: waiting for its next batch (starved)
    "encoder_call_us",  # inside calls: host and device work of the batches
    "encoder_h2d_us",  # copies to the device
    "encoder_compute_us",  # forward and pooling
    "encoder_d2h_us",  # copies back to host memory
    "encoder_micro_batches",
    "encoder_packed_micro_batches",  # of them, packed (varlen attention): the attention actually used
    "encoder_token_slots",  # tokens the device processed, padding included
)


@dataclass
class _Marks:
    """One micro-batch's four marks (CUDA events, or perf_counter seconds on CPU)."""

    marks: list[Any] = field(default_factory=list)
    packed: bool = False
    token_slots: int = 0


class EncoderClock:
    """Accumulates one encode actor's time split (see the module's doc)."""

    def __init__(self, device: str, torch: Any = None):
        self.cuda = device == "cuda"
        self.torch = torch
        self.totals = dict.fromkeys(KEYS, 0)
        self._last_end: float | None = None
        self._call_start: float | None = None

    # ---- around a call (one Ray batch)
    def call_started(self) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self.totals["encoder_wait_us"] += _us(now - self._last_end)
        self._call_start = now

    def call_ended(self) -> None:
        now = time.perf_counter()
        if self._call_start is not None:
            self.totals["encoder_call_us"] += _us(now - self._call_start)
        self._last_end, self._call_start = now, None

    # ---- per micro-batch
    def start(self, token_slots: int, packed: bool) -> _Marks:
        """A micro-batch begins (before its copy to the device); counted once it finishes (a batch
        that runs out of memory is split, and its halves count instead)."""
        marks = _Marks(packed=packed, token_slots=int(token_slots))
        self.mark(marks)
        return marks

    def mark(self, marks: _Marks | None) -> None:
        if marks is None:
            return
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            marks.marks.append(event)
        else:
            marks.marks.append(time.perf_counter())

    def finished(self, marks: _Marks | None) -> None:
        """The micro-batch's copy back is done (its result was waited for): add its device times."""
        if marks is None or len(marks.marks) != 4:
            return
        a, b, c, d = marks.marks
        if self.cuda:  # elapsed_time is in milliseconds
            h2d, compute, d2h = (x.elapsed_time(y) / 1e3 for x, y in ((a, b), (b, c), (c, d)))
        else:
            h2d, compute, d2h = b - a, c - b, d - c
        self.totals["encoder_h2d_us"] += _us(h2d)
        self.totals["encoder_compute_us"] += _us(compute)
        self.totals["encoder_d2h_us"] += _us(d2h)
        self.totals["encoder_micro_batches"] += 1
        self.totals["encoder_packed_micro_batches"] += int(marks.packed)
        self.totals["encoder_token_slots"] += marks.token_slots
        marks.marks.clear()

    def take(self) -> dict[str, int]:
        """What accumulated since the last ``take()`` (then zero again)."""
        out, self.totals = self.totals, dict.fromkeys(KEYS, 0)
        return {k: v for k, v in out.items() if v}


def _us(seconds: float) -> int:
    return max(0, int(round(seconds * 1e6)))


def encoder_split(values: dict[str, Any]) -> dict[str, Any] | None:
    """The encoder's side of a run from its summed progress values: seconds per part, the device's
    busy share of the encoders' time (waits included: a starved device shows here), the padding
    share of its token slots and the attention its micro-batches used. None when nothing encoded."""
    seconds = {
        k.removeprefix("encoder_").removesuffix("_us") + "_s": values.get(k, 0) / 1e6 for k in KEYS if k.endswith("_us")
    }
    held = seconds["wait_s"] + seconds["call_s"]
    if not values.get("encoder_micro_batches") or held <= 0:
        return None
    device = seconds["h2d_s"] + seconds["compute_s"] + seconds["d2h_s"]
    slots, tokens = values.get("encoder_token_slots", 0), values.get("encoded_tokens", 0)
    packed, batches = values.get("encoder_packed_micro_batches", 0), values["encoder_micro_batches"]
    return {
        **{k: round(v, 3) for k, v in seconds.items()},
        # the host's own work inside calls that no device work covered (sorting, padding, Arrow, Python)
        "host_s": round(max(0.0, seconds["call_s"] - device), 3),
        "device_busy_share": round(device / held, 4),
        "compute_share": round(seconds["compute_s"] / held, 4),
        "wait_share": round(seconds["wait_s"] / held, 4),
        "micro_batches": int(batches),
        "padding_share": round(1 - tokens / slots, 4) if slots and tokens else None,
        "attention": "packed" if packed == batches else ("padded" if not packed else "mixed"),
    }
