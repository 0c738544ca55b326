"""The model card's own algorithm, written out again here so that ``verify`` does not trust the code
that wrote the vectors (``pipeline.stages``): transformers' tokenizer and model in float32 on CPU,
the mean over the attention mask, L2 normalisation — the card's ``average_pool`` verbatim."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BATCH = 16


def card_embeddings(model_folder: str, texts: Sequence[str], max_length: int) -> np.ndarray:
    """One L2-normalised float32 vector per text (the texts carry their prefix already)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from pipeline.stages.model import quiet_transformers

    quiet_transformers()  # no download bars or warnings in the audit's output
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModel.from_pretrained(model_folder, dtype=torch.float32).eval()

    def average_pool(last_hidden_states, attention_mask):  # the card's, verbatim
        last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
        return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                list(texts[start : start + BATCH]),
                max_length=max_length,
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            outputs = model(**batch)
            embeddings = average_pool(outputs.last_hidden_state, batch["attention_mask"])
            out.append(F.normalize(embeddings, p=2, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
