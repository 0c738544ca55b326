"""Stages with injected device faults, importable by Ray workers (no GPU here: OOM is simulated)."""

import torch

from pipeline.stages.encode import EncodeStage


class OutOfMemoryAboveTwoRows(EncodeStage):
    """Every padded micro-batch of more than two rows fails as a CUDA out-of-memory would."""

    def _launch(self, input_ids, mask):
        if len(input_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return super()._launch(input_ids, mask)
