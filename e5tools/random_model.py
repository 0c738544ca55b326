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


XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # XLM-R's ids 0..3 (+ mask)


def train_unigram_metaspace_tokenizer(texts, vocab_size: int = 3000):
    """A small XLM-R-style tokenizer trained on ``texts``: NFKC, Metaspace (``▁``) pre-tokenizer,
    a Unigram model, ``<s> … </s>`` around each text, no token types (as multilingual E5 has)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(XLMR_SPECIALS), unk_token="<unk>", max_piece_length=8
    )
    tok.train_from_iterator(texts, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return tok


def write_random_xlmr(
    path: str,
    texts,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    ffn: int = 128,
    positions: int = 514,
    vocab_size: int = 3000,
    seed: int = 0,
) -> str:
    """Save a random XLMRobertaModel (multilingual E5's architecture: 514 positions, padding id 1,
    one token type) with a Unigram/Metaspace tokenizer trained on ``texts`` into ``path``."""
    import torch
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    tok = train_unigram_metaspace_tokenizer(texts, vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=positions - 2,
    )
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        type_vocab_size=1,
        pad_token_id=tok.token_to_id("<pad>"),
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
    )
    os.makedirs(path, exist_ok=True)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    fast.save_pretrained(path)
    with open(os.path.join(path, "RANDOM_WEIGHTS.txt"), "w") as f:
        f.write("Randomly initialised weights (architecture only): not a trained model.\n")
    return path
