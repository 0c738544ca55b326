"""The model card's code for intfloat/e5-base-v2: the one independent reference.

It imports nothing from ``pipeline`` (``tests/test_layers.py`` checks), so a bug in the product's
pooling, prefixing, truncation or normalisation cannot pass a parity check against it. The tests
(``tests/reference.py``), the benchmark (``e5tools/bench.py``) and the GPU quick check
(``jobs/gpu_quick.py``) all use it.
"""

from __future__ import annotations

import functools

import numpy as np


def average_pool(last_hidden_states, attention_mask):
    """The card's mean pooling over the attention mask."""
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


@functools.lru_cache(maxsize=4)
def card_model(model_path: str, device: str = "cpu"):
    """Loaded once per path and device (read-only: eval mode, no grad)."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).to(device).eval()


def card_batches(model_path: str, input_texts: list[str], *, max_length: int = 512, batch_size: int = 32,
                 device: str = "cpu"):  # fmt: skip
    """The card's code over ``input_texts`` (already prefixed) in batches: for each batch, (the
    L2-normalised embeddings as a float32 numpy array, the attention mask)."""
    import torch
    import torch.nn.functional as F

    tokenizer, model = card_model(model_path, device)
    for i in range(0, len(input_texts), batch_size):
        batch = tokenizer(
            input_texts[i : i + batch_size], max_length=max_length, padding=True, truncation=True, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            outputs = model(**batch)
        embeddings = F.normalize(average_pool(outputs.last_hidden_state, batch["attention_mask"]), p=2, dim=1)
        yield embeddings.float().cpu().numpy(), batch["attention_mask"].cpu()


def reference_embeddings(model_path: str, input_texts: list[str], max_length: int = 512, *, device: str = "cpu",
                         batch_size: int = 1 << 30):  # fmt: skip
    """(embeddings, tokens per text): the card's code, float32."""
    vectors, lengths = [], []
    for embeddings, mask in card_batches(model_path, input_texts, max_length=max_length, batch_size=batch_size,
                                         device=device):  # fmt: skip
        vectors.append(embeddings)
        lengths.append(mask.sum(dim=1).numpy())
    return np.concatenate(vectors), np.concatenate(lengths)
