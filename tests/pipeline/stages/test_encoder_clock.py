"""The encoder's own clocks (pipeline.stages.encoder_clock) on the CPU path: every micro-batch
counted once with its token slots, the wait between calls (a starved encoder) seen as waiting, the
padding share from the slots, the attention actually used; and the split a run reports."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.stages.embedder import records_table
from pipeline.stages.encode import EncodeStage
from pipeline.stages.encoder_clock import EncoderClock, encoder_split
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage
from tests.pipeline.stages.test_encode import TEXTS

pytestmark = pytest.mark.unit


def tokens(model_path: str):
    source = ModelSource(name_or_path=model_path)
    return source, TokenizeStage(model=source, prefix="passage: ", max_length=512)(records_table(TEXTS, source="s"))


@pytest.mark.parametrize("attention", ["padded", "packed"])
def test_every_micro_batch_is_counted_once_with_its_slots_and_a_starved_encoder_shows_waiting(minilm_path, attention):
    source, batch = tokens(minilm_path)
    stage = EncodeStage(model=source, batch_size=3, dtype="float32", device="cpu", attention=attention)
    stage.setup()
    assert stage.clock.take() == {}  # set-up is start-up, not encoding
    stage(batch)
    time.sleep(0.3)  # the actor waits for its next batch: the reader or tokenizer is behind
    stage(batch)
    values = stage.clock.take()
    lengths = np.asarray(batch["n_tokens"].to_pylist())
    real = int(lengths.sum())
    if attention == "padded":  # batches of 3 rows, longest first, each padded to its longest row
        ordered = np.sort(lengths)[::-1]
        slots = sum(int(ordered[i : i + 3].max()) * len(ordered[i : i + 3]) for i in range(0, len(ordered), 3))
        assert values["encoder_micro_batches"] == 2 * 3 and "encoder_packed_micro_batches" not in values
    else:  # packed: no padding, every slot a token
        slots = real
        assert values["encoder_packed_micro_batches"] == values["encoder_micro_batches"]
    assert values["encoder_token_slots"] == 2 * slots
    assert values["encoder_wait_us"] >= 0.3e6  # the gap between the two calls, and only it
    assert values["encoder_compute_us"] > 0 and values["encoder_call_us"] >= values["encoder_compute_us"]

    split = encoder_split({**values, "encoded_tokens": 2 * real})
    assert split["attention"] == attention
    assert split["padding_share"] == pytest.approx(1 - real / slots, abs=1e-4)
    held = split["wait_s"] + split["call_s"]
    device = split["h2d_s"] + split["compute_s"] + split["d2h_s"]
    assert split["device_busy_share"] == pytest.approx(device / held, abs=1e-3)
    assert split["wait_share"] + split["device_busy_share"] <= 1.0 + 1e-6
    assert stage.clock.take() == {}  # handed over once


def test_an_out_of_memory_split_counts_the_halves_not_the_failed_batch(minilm_path):
    from tests.faults import OutOfMemoryAbove

    source, batch = tokens(minilm_path)
    stage = OutOfMemoryAbove(model=source, batch_size=4, dtype="float32", device="cpu")  # > 2 rows: OOM
    stage(batch)
    values = stage.clock.take()
    lengths = np.sort(np.asarray(batch["n_tokens"].to_pylist()))[::-1]
    # every row through a micro-batch of at most 2 rows that ran (halves keep their batch's width); the
    # failed 4-row launches count nothing: the slots stay within one pass of 4-row batches
    assert values["encoder_micro_batches"] >= len(lengths) / 2
    assert lengths.sum() <= values["encoder_token_slots"]
    assert values["encoder_token_slots"] <= sum(int(lengths[i : i + 4].max()) * 4 for i in range(0, len(lengths), 4))


def test_the_split_of_a_run_adds_up_over_actors():
    a, b = EncoderClock("cpu"), EncoderClock("cpu")
    for clock in (a, b):
        marks = clock.start(token_slots=100, packed=False)
        for _ in range(3):
            clock.mark(marks)
        clock.finished(marks)
    total: dict[str, int] = {}
    for values in (a.take(), b.take()):
        for k, v in values.items():
            total[k] = total.get(k, 0) + v
    assert total["encoder_micro_batches"] == 2 and total["encoder_token_slots"] == 200
    assert encoder_split(total) is None  # no call was timed: no share to state
    assert encoder_split({}) is None
