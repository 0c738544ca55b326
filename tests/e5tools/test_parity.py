"""The parity metric fails seeded bugs that a cosine threshold lets through on random weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e5tools.parity import TOLERANCE, parity_error, spread
from tests.reference import average_pool, card_model, reference_embeddings

pytestmark = pytest.mark.unit

TEXTS = [
    f"passage: {t}"
    for t in (
        "how to compress data with gzip",
        "the capital of France is Paris",
        "a b c",
        "word " * 40,
        "ray data streaming batch inference on gpus",
        "short",
        "embeddings are vectors that stand for texts",
        "zstd frames can be decoded in pieces",
    )
]


def _bugged(path: str, bug: str) -> np.ndarray:
    """The card's code with one seeded bug."""
    tokenizer, model = card_model(path)
    batch = tokenizer(TEXTS, max_length=512, padding=True, truncation=True, return_tensors="pt")
    kwargs = dict(batch)
    if bug == "positions shifted by one":
        kwargs["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None] + 1
    with torch.no_grad():
        hidden = model(**kwargs).last_hidden_state
    if bug == "padding pooled":
        pooled = hidden.mean(dim=1)
    else:
        pooled = average_pool(hidden, batch["attention_mask"])
    return F.normalize(pooled, p=2, dim=1).numpy()


@pytest.mark.parametrize("bug", ["positions shifted by one", "padding pooled"])
@pytest.mark.parametrize("model", ["tiny_e5_path", "minilm_path"])
def test_a_seeded_bug_fails_parity(model, bug, request):
    path = request.getfixturevalue(model)
    ref, _ = reference_embeddings(path, TEXTS)
    assert parity_error(ref, ref) == 0.0
    bugged = _bugged(path, bug)
    error, cosine = parity_error(bugged, ref), float((bugged * ref).sum(1).min())
    assert error > 20 * TOLERANCE["float32"], (model, bug, error, cosine)


def test_random_weights_put_different_texts_close_the_spread_measures_it(tiny_e5_path, minilm_path):
    """Why a cosine threshold is not enough on random weights: different texts are near each other."""
    random_ref, _ = reference_embeddings(tiny_e5_path, TEXTS)
    real_ref, _ = reference_embeddings(minilm_path, TEXTS)
    assert spread(random_ref) < spread(real_ref) / 3
    with pytest.raises(ValueError, match="at least two"):
        spread(real_ref[:1])
