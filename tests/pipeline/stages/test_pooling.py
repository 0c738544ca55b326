import pytest
import torch

from pipeline.stages.pooling import average_pool, l2_normalize

pytestmark = pytest.mark.unit


def test_average_pool_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # row 0: mean of the first two tokens; the padded (100, 100) must not count
    assert average_pool(hidden, mask).tolist() == [[2.0, 3.0], [2.0, 0.0]]


def test_l2_normalize_by_hand():
    out = l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
