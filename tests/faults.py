"""Stages with injected device faults, importable by Ray workers (no GPU here: OOM is simulated)."""

import torch

from pipeline.stages.encode import EncodeStage


class OutOfMemoryAbove(EncodeStage):
    """Every micro-batch of more than ``max_rows`` rows (padded or packed) fails as a CUDA
    out-of-memory would; a subclass sets another ``max_rows``."""

    max_rows = 2

    def _launch(self, input_ids, mask):
        if len(input_ids) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return super()._launch(input_ids, mask)

    def _launch_packed(self, ids, lengths):
        if len(lengths) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return super()._launch_packed(ids, lengths)
