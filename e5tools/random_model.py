"""Randomly initialised BERT encoders with E5's shapes, for tests and benchmarks.

No model hub is reachable here, so speed and memory of e5-base-v2 are measured
on its exact architecture with random weights (anything that reports numbers
from these says so). The tokenizer is the uncased WordPiece vocabulary (30522 tokens) that E5 shares
with BERT, bundled in ``e5tools/data/bert-uncased-tokenizer``.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_random_bert(
    path: str,
    *,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    vocab: int = 30522,
    positions: int = 512,
    seed: int = 0,
    tokenizer_from: str | None = None,
) -> str:
    """Save a random BertModel (safetensors) plus a WordPiece tokenizer into ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    if tokenizer_from is None:
        tokenizer_from = str(resources.files("e5tools") / "data" / "bert-uncased-tokenizer")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
    )
    os.makedirs(path, exist_ok=True)
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    for name in TOKENIZER_FILES:
        src = os.path.join(tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(path, name))
    with open(os.path.join(path, "RANDOM_WEIGHTS.txt"), "w") as f:
        f.write("Randomly initialised weights (architecture only): not a trained model.\n")
    return path


def write_random_e5_base(path: str, seed: int = 0) -> str:
    from pipeline.stages.model import KNOWN_SHAPES

    shape = KNOWN_SHAPES["intfloat/e5-base-v2"]
    return write_random_bert(
        path,
        layers=shape.num_layers,
        hidden=shape.hidden_size,
        heads=shape.num_heads,
        ffn=shape.intermediate_size,
        vocab=shape.vocab_size,
        positions=shape.max_positions,
        seed=seed,
    )
