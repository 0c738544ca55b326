"""What E5 is and what the encode stage can do: the facts the stages own and the settings choose from.

The model card's prefixes (``passage: `` for what is stored, ``query: `` for what is asked), the
compute and storage dtypes and devices the encode stage handles, and its attention modes. The flag
table (``pipeline.flags``) offers these as choices; it does not define them.
"""

from __future__ import annotations

DEFAULT_MODEL = "intfloat/e5-base-v2"
PREFIXES = {"passage": "passage: ", "query": "query: ", "none": ""}  # the card's prefixes, by name
DTYPES = ("auto", "float32", "float16", "bfloat16")  # compute dtype (auto: bf16/fp16 on GPU, float32 on CPU)
OUTPUT_DTYPES = ("float32", "float16")  # the stored embedding's dtype
# auto: packed where its fast kernel runs (CUDA, compute capability 8.0+, bf16/fp16, torch's varlen
# attention), padded elsewhere; padded micro-batches (SDPA) or packed rows (varlen attention)
ATTENTION_MODES = ("auto", "padded", "packed")
ATTENTIONS = ("padded", "packed")  # what an encoder actually runs (``auto`` resolves to one of them)
DEVICES = ("auto", "cuda", "cpu")
