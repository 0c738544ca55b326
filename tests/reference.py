"""The model card's reference code for intfloat/e5-base-v2, verbatim in substance: the ground truth."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer


def average_pool(last_hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


@functools.lru_cache(maxsize=4)
def _reference_model(model_path: str):
    """Loaded once per path and test session (read-only: eval mode, no grad)."""
    return AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()


def reference_embeddings(model_path: str, input_texts: list[str], max_length: int = 512):
    tokenizer, model = _reference_model(model_path)
    batch_dict = tokenizer(input_texts, max_length=max_length, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch_dict)
    embeddings = average_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
    embeddings = F.normalize(embeddings, p=2, dim=1)
    return embeddings.numpy(), batch_dict["attention_mask"].sum(dim=1).numpy()
