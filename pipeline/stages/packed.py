"""Packed (unpadded) encoding: a micro-batch is its rows' tokens laid end to end, no padding.

Candidate (b) of the GPU fast path (``--attention packed``). The encoder's own modules (the
Hugging Face BERT / XLM-R weights, untouched) run on a ``(tokens, hidden)`` tensor; only attention
needs to know where each row starts: ``cu_seqlens`` (cumulative row lengths). On CUDA that is
torch's variable-length flash attention (``torch.nn.attention.varlen.varlen_attn``); on CPU, and
wherever it is missing, each row runs through ``scaled_dot_product_attention`` on its own (what the
CPU parity tests exercise). Pooling is a segment mean (``index_add_``) in float32: no padding
mask, no boolean mask that forces SDPA off its flash kernel, no host sync on the mask.
"""

from __future__ import annotations

from typing import Any

ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
FLASH_VARLEN_MIN_CAPABILITY = (8, 0)  # torch's varlen flash attention: Ampere (sm80) and newer


def packed_unavailable(torch: Any, device: str, dtype: str) -> str | None:
    """Why ``--attention packed`` cannot run its fast kernel here (None: it can). On CUDA it needs
    torch's ``varlen_attn``, fp16/bf16 and compute capability 8.0+; anywhere else its per-row attention
    is a correctness path (the CPU parity tests), not a fast one, and is allowed."""
    if device != "cuda":
        return None
    if dtype not in ("float16", "bfloat16"):
        return f"flash varlen attention needs float16 or bfloat16, not {dtype}"
    capability = tuple(torch.cuda.get_device_capability())
    if capability < FLASH_VARLEN_MIN_CAPABILITY:
        return (
            f"flash varlen attention needs compute capability {'.'.join(map(str, FLASH_VARLEN_MIN_CAPABILITY))}+; "
            f"this GPU ({torch.cuda.get_device_name()}) is {'.'.join(map(str, capability))}"
        )
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.varlen"
    return None


def resolve_attention(asked: str, torch: Any, device: str, dtype: str, shape_buckets: Any = None) -> tuple[str, str]:
    """What an encoder runs for ``--attention asked``, and why. ``auto``: packed where its fast
    kernel runs, padded elsewhere (CPU, float32, an older GPU or torch; shape buckets pad to fixed
    shapes). An explicit ``packed`` on a GPU without the fast kernel falls back to padded, loudly."""
    if asked == "padded":
        return "padded", "asked for"
    if shape_buckets:
        return "padded", "shape buckets pad to fixed shapes"
    reason = packed_unavailable(torch, device, dtype)
    if asked == "packed":
        return ("padded", reason) if reason else ("packed", "asked for")
    if device != "cuda":
        return "padded", f"not on CUDA ({device}): packed attention's fast kernel is CUDA's"
    return ("padded", reason) if reason else ("packed", "flash varlen attention runs here")


def planned_attention(asked: str, device: str, dtype: str, shape_buckets: Any = None) -> str:
    """What the plan expects the encoders to run (the driver cannot see a GPU's compute capability:
    auto on CUDA in bf16/fp16 is expected packed; a calibration is compared with this)."""
    if asked != "auto":
        return asked
    packed = device == "cuda" and dtype in ("float16", "bfloat16") and not shape_buckets
    return "packed" if packed else "padded"


class PackedEncoder:
    """Runs a loaded BertModel/XLMRobertaModel (eval) over packed rows; returns L2-normalised means."""

    def __init__(self, model: Any):
        import torch

        self.torch = torch
        self.model = model
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(config.hidden_size) // self.heads
        # RoBERTa/XLM-R number positions from padding_idx + 1 (the padded model's position ids do the same)
        self.position_offset = int(config.pad_token_id) + 1 if getattr(config, "model_type", "") in ROBERTA_TYPES else 0
        try:  # torch's variable-length flash attention (CUDA, fp16/bf16); absent in older builds
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            varlen_attn = None
        self.varlen = varlen_attn

    def __call__(self, ids, lengths):
        """``ids``: (tokens,) int64 on the model's device; ``lengths``: (rows,) a numpy int array on the
        host, summing to tokens.

        Returns (rows, hidden) float32 embeddings, L2-normalised (E5's mean pooling over each row).
        Row bounds, positions and the row of each token are built on the host from ``lengths`` and
        copied without waiting, so nothing here makes the host wait for the device.
        """
        import numpy as np

        torch = self.torch
        F = torch.nn.functional
        device = ids.device
        lengths = np.asarray(lengths, dtype=np.int64)
        rows = len(lengths)
        cu_host = np.concatenate([[0], np.cumsum(lengths)])
        row_host = np.repeat(np.arange(rows, dtype=np.int64), lengths)
        positions_host = np.arange(int(cu_host[-1]), dtype=np.int64) - cu_host[:-1][row_host] + self.position_offset

        def to_device(a):
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t

        row_of, positions = to_device(row_host), to_device(positions_host)
        cu = to_device(cu_host.astype(np.int32))
        lengths_t = to_device(lengths)
        emb = self.model.embeddings
        hidden = emb.word_embeddings(ids) + emb.token_type_embeddings(torch.zeros_like(ids))
        hidden = emb.LayerNorm(hidden + emb.position_embeddings(positions))
        longest = int(lengths.max()) if rows else 0
        bounds = None
        for layer in self.model.encoder.layer:
            attn = layer.attention.self
            shape = (-1, self.heads, self.head_dim)
            q, k, v = (proj(hidden).view(shape) for proj in (attn.query, attn.key, attn.value))
            if self._varlen_here(q):
                context = self.varlen(q, k, v, cu, cu, longest, longest)
            else:
                if bounds is None:
                    bounds = cu_host.tolist()
                context = torch.empty_like(q)
                for a, b in zip(bounds[:-1], bounds[1:]):
                    # (1, heads, len, dim) per row: the same math as the padded path, without padding
                    part = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))
                    context[a:b] = part[0].transpose(0, 1)
            attention_out = layer.attention.output(context.reshape(hidden.shape), hidden)
            hidden = layer.output(layer.intermediate(attention_out), attention_out)
        sums = torch.zeros((rows, hidden.shape[1]), dtype=torch.float32, device=device)
        sums.index_add_(0, row_of, hidden.float())
        return F.normalize(sums / lengths_t[:, None].to(torch.float32), p=2, dim=1)

    def _varlen_here(self, q) -> bool:
        return self.varlen is not None and q.is_cuda and q.dtype in (self.torch.float16, self.torch.bfloat16)
