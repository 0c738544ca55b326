"""GPU (or CPU) stage: fixed-size, length-sorted micro-batches through the encoder.

TOKENIZED in, ``schemas.embedded_schema(dim)`` out. Inside each Ray batch, rows
are sorted by token count (longest first, so an out-of-memory shows up on the
first micro-batch), padded only to the longest row of their micro-batch, pooled
and normalized, moved off the device inside the loop, and put back in their
original order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import JobError, UsageError
from pipeline.io import schemas
from pipeline.stages.e5 import ATTENTION_MODES
from pipeline.stages.encoder_clock import EncoderClock
from pipeline.stages.model import ModelSource, resolve_device, resolve_dtype
from pipeline.stages.packed import PackedEncoder, resolve_attention
from pipeline.stages.spec import ENCODE, Needs

logger = logging.getLogger(__name__)

# Tests that declare Ray GPUs on a machine without one set this; anywhere else a GPU actor
# without CUDA is an error, never a quiet CPU run.
ALLOW_CPU_ON_GPU_ENV = "E5_EMBED_ALLOW_CPU_ON_GPU"
CUDA_PROCESS_ENV = (("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),)
WARM_CALLS = 2  # calls per shape bucket at warm-up: compile on the first, CUDA-graph capture on the second
# RuntimeErrors that are allocation failures in disguise (library workspaces on a full device)
ALLOC_FAILURES = (
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED",
    "CUDA out of memory",
)


class EncodeSettings:
    """The EncodeStage's constructor arguments, as the plan fixes them."""

    model: ModelSource  # where the weights come from
    batch_size: int  # rows per forward pass (the plan's fixed batch)
    dtype: str = "auto"  # compute dtype (auto: bf16/fp16 on GPU, float32 on CPU)
    device: str = "auto"
    output_dtype: str = "float32"  # stored embedding dtype
    torch_threads: int | None = None  # torch's intra-op threads per actor (None: torch's default)
    expect_gpu: bool = False  # the plan gave this actor a GPU
    compile_model: bool = False  # torch.compile the encoder
    memory_fraction: float | None = None  # share of the GPU this actor may use (several actors per GPU)
    attention: str = "auto"  # auto (packed where its fast kernel runs), padded (SDPA) or packed (varlen)
    shape_buckets: tuple[int, ...] | None = None  # compile for these padded widths only (static shapes)


class EncodeStage:
    """A callable class over TOKENIZED tables: the model is loaded once per instance (actor)."""

    # a GPU (or a share of one) per actor where the cluster has them; the caching allocator set for
    # ragged batches (fewer fragmentation OOMs) in the actor's process before its first CUDA call.
    # In-process use on a GPU (Embedder, the GPU scripts): the process's owner sets CUDA_PROCESS_ENV.
    role = ENCODE
    needs = Needs(accelerator=True, gpu_process_env=CUDA_PROCESS_ENV)

    def __init__(
        self,
        *,
        model: ModelSource,
        batch_size: int,
        dtype: str = "auto",
        device: str = "auto",
        output_dtype: str = "float32",
        torch_threads: int | None = None,
        pad_multiple: int | None = None,
        expect_gpu: bool = False,
        compile_model: bool = False,
        memory_fraction: float | None = None,
        attention: str = "auto",
        shape_buckets: tuple[int, ...] | None = None,
    ):
        """Cheap: the settings are checked and the device decided; nothing is loaded or compiled
        (``setup``, on the actor)."""
        if attention not in ATTENTION_MODES:  # before any model is loaded
            raise UsageError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {attention!r}")
        self.device = resolve_device(device)
        if expect_gpu and self.device != "cuda":
            if os.environ.get(ALLOW_CPU_ON_GPU_ENV) != "1":
                raise JobError(
                    "this encode actor was given a GPU by the plan but sees no CUDA device (a "
                    "CPU-only torch build on a GPU node?); refusing to encode on CPU"
                )
            logger.warning(
                "this encode actor holds a Ray GPU but no CUDA device is visible; encoding on CPU in "
                "float32 (%s=1: for tests on clusters that only declare GPUs)",
                ALLOW_CPU_ON_GPU_ENV,
            )
            dtype = "float32"
        self.dtype = resolve_dtype(dtype, self.device)
        if dtype != "auto" and self.dtype != dtype:  # the output records the plan's dtype: compute in it
            raise JobError(
                f"this encode actor was planned to compute in {dtype}, which its device lacks (it would "
                f"compute in {self.dtype}); the output records one compute dtype, so pass --dtype {self.dtype} "
                "(or a scheduler profile with bf16: false for this GPU)"
            )
        if attention != "padded":
            import torch

            asked = attention
            attention, why = resolve_attention(asked, torch, self.device, self.dtype, shape_buckets)
            if asked == "packed" and attention != "packed":  # loudly, never a per-row fallback
                logger.warning("--attention packed: %s; this actor encodes padded micro-batches instead", why)
            elif asked == "auto":
                logger.info("--attention auto: %s (%s)", attention, why)
        self.source = model
        self.batch_size = batch_size
        self.output_dtype = output_dtype
        self.torch_threads = torch_threads
        self.compile_model = compile_model
        self.memory_fraction = memory_fraction
        self.attention = attention
        self.shape_buckets = tuple(shape_buckets) if shape_buckets else None
        self.pad_multiple = pad_multiple if pad_multiple is not None else (8 if self.device == "cuda" else 1)
        self.oom_splits = 0
        self.model: Any = None  # set by setup()

    def setup(self) -> None:
        """Load the model once, on the actor (``TimedStage`` calls it when the actor starts; in-process
        use loads it at the first batch): threads or the GPU share, the weights, compilation and, with
        ``shape_buckets``, the warm-up of every bucket."""
        if self.model is not None:
            return
        import torch

        self._torch = torch
        # two independent settings: host threads, and the GPU share (several actors per GPU)
        if self.torch_threads:  # the plan's (GPU actors: their one host core)
            torch.set_num_threads(self.torch_threads)
        elif self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        if self.device == "cuda" and self.memory_fraction is not None and self.memory_fraction < 1.0:
            torch.cuda.set_per_process_memory_fraction(self.memory_fraction)
        model = self.source.load_model(dtype=self.dtype, device=self.device)
        self.dim = int(model.config.hidden_size)
        # padding positions hold the model's pad id (1 for XLM-R, whose position ids skip it)
        self.pad_id = int(getattr(model.config, "pad_token_id", None) or 0)
        # torch.compile with dynamic shapes: one compilation serves every (rows, width); it costs a
        # warm-up per actor (12-30 s for MiniLM on 2 CPU cores) and is opt-in (docs/benchmarks.md).
        if self.shape_buckets:
            # static shapes: one graph per (batch_size, bucket), CUDA graphs on a GPU ("reduce-overhead")
            mode = "reduce-overhead" if self.device == "cuda" else "default"
            self.forward = torch.compile(model, dynamic=False, mode=mode)
        elif self.compile_model:
            self.forward = torch.compile(model, dynamic=True)
        else:
            self.forward = model
        self.packed = PackedEncoder(model) if self.attention == "packed" else None
        self.clock = EncoderClock(self.device, torch)
        self.model = model
        logger.info(
            "encode actor ready: model=%s device=%s dtype=%s batch_size=%d compiled=%s",
            self.source.name_or_path,
            self.device,
            self.dtype,
            self.batch_size,
            self.compile_model,
        )
        if self.shape_buckets:
            self._warm_buckets()
        self.clock.take()  # the warm-up is start-up, not the run's encoding

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.setup()
        self.clock.call_started()
        try:
            return self._encode_batch(batch)
        finally:
            self.clock.call_ended()

    def _encode_batch(self, batch: pa.Table) -> pa.Table:
        ids_col = (
            batch["input_ids"].combine_chunks()
            if isinstance(batch["input_ids"], pa.ChunkedArray)
            else batch["input_ids"]
        )
        if pa.types.is_list(ids_col.type.value_type):
            return self._encode_windows(batch, ids_col)
        ok = pc.is_valid(ids_col).to_numpy(zero_copy_only=False)
        good = np.flatnonzero(ok)
        embeddings = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        if len(good):
            offsets = ids_col.offsets.to_numpy()
            values = ids_col.values.to_numpy()
            embeddings[good] = self.encode_ragged(values, offsets, good)
        out_type = np.float16 if self.output_dtype == "float16" else np.float32
        flat = pa.array(embeddings.astype(out_type, copy=False).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~ok))
        return schemas.keyed_table(batch, schemas.embedded_schema(self.dim, self.output_dtype), embedding=embedding)

    def _encode_windows(self, batch: pa.Table, ids_col: pa.ListArray) -> pa.Table:
        """Chunked runs: every window of every record through the same length-sorted micro-batches;
        the embeddings go back as one list per record (``schemas.chunk_embedded_schema``)."""
        outer = ids_col.offsets.to_numpy()
        windows = ids_col.values.slice(int(outer[0]), int(outer[-1] - outer[0]))
        n_windows = len(windows)
        embeddings = np.zeros((n_windows, self.dim), dtype=np.float32)
        if n_windows:
            offsets = windows.offsets.to_numpy()
            embeddings = self.encode_ragged(windows.values.to_numpy(), offsets, np.arange(n_windows))
        out_type = np.float16 if self.output_dtype == "float16" else np.float32
        flat = pa.array(embeddings.astype(out_type, copy=False).reshape(-1))
        per_window = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        embedding = pa.ListArray.from_arrays(
            pa.array(outer - outer[0], pa.int32()), per_window, mask=pc.is_null(ids_col)
        )
        return schemas.keyed_table(
            batch, schemas.chunk_embedded_schema(self.dim, self.output_dtype), embedding=embedding
        )

    def encode_ragged(self, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Embeddings for ``rows`` of a ragged id array, in the order of ``rows``.

        One micro-batch stays in flight: the next one is padded and queued on the device before
        the previous one's results are waited for, so on a GPU the host-side work overlaps the
        device's compute (on CPU each launch simply runs to completion).
        """
        self.setup()
        lengths = offsets[rows + 1] - offsets[rows]
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        written = 0
        in_flight: tuple[np.ndarray, _InFlight] | None = None
        for chunk in self._micro_batches(lengths, order):
            written += len(chunk)
            starts, chunk_lengths = offsets[rows[chunk]], lengths[chunk]
            if self.packed is not None:
                ids, mask = _gather(values, starts, chunk_lengths, int(chunk_lengths.max()), 0)
                launched = self._launch_packed_splitting(ids[mask], chunk_lengths.astype(np.int64))
            else:
                launched = self._launch_splitting(*self._pad(values, starts, chunk_lengths))
            if in_flight is not None:
                out[in_flight[0]] = in_flight[1].result()[: len(in_flight[0])]  # filler rows dropped
            in_flight = (chunk, launched)
        if in_flight is not None:
            out[in_flight[0]] = in_flight[1].result()[: len(in_flight[0])]
        if written != len(rows):  # every row in exactly one micro-batch, or no result at all
            raise RuntimeError(f"encoder micro-batches covered {written} of {len(rows)} rows")
        return out

    def _micro_batches(self, lengths: np.ndarray, order: np.ndarray):
        """Row indices per micro-batch, longest rows first. Padded: ``batch_size`` rows each. Packed: as
        many rows as fit ``batch_size`` x the longest row's tokens (the padded batch's token slots).

        ``batch_size`` is read again for every micro-batch: an out-of-memory lowers it while this
        generator is paused, and the next micro-batch starts right after the last one, whatever its size.
        """
        start, n = 0, len(order)
        longest = int(lengths[order[0]]) if n else 0
        while start < n:
            if self.attention != "packed":
                end = min(n, start + self.batch_size)
            else:
                budget, used, end = self.batch_size * longest, 0, start
                while end < n and (end == start or used + lengths[order[end]] <= budget):
                    used += int(lengths[order[end]])
                    end += 1
            yield order[start:end]
            start = end

    def _pad(self, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``values[start : start + length]`` padded to one width (ids, attention mask)."""
        longest = int(lengths.max())
        width = -(-longest // self.pad_multiple) * self.pad_multiple
        rows = len(lengths)
        if self.shape_buckets:  # a compiled shape: the bucket's width, batch_size rows
            width = next((b for b in self.shape_buckets if b >= longest), width)
            rows = max(rows, self.batch_size)
        input_ids, valid = _gather(values, starts, lengths, width, self.pad_id)
        mask = valid.astype(np.int64)
        if rows > len(lengths):  # filler rows attend to one token (no all-masked row); dropped after
            filler = rows - len(lengths)
            input_ids = np.concatenate([input_ids, np.full((filler, width), self.pad_id, dtype=np.int64)])
            mask = np.concatenate([mask, np.zeros((filler, width), dtype=np.int64)])
            mask[len(lengths) :, 0] = 1
        return input_ids, mask

    def _warm_buckets(self) -> None:
        """Compile (and on CUDA capture) every bucket's shape before the first batch arrives: each shape
        runs ``WARM_CALLS`` times, since CUDA-graph trees ("reduce-overhead") record a graph on a shape's
        second call, not its first; with one call the first real batches would capture inside the run."""
        import time

        started = time.perf_counter()
        for width in self.shape_buckets:
            ids, mask = self._pad(np.full(width, self.pad_id, dtype=np.int64), np.zeros(1, np.int64), np.full(1, width))
            for _ in range(WARM_CALLS):
                self._launch(ids, mask).result()
        logger.info(
            "encoder compiled for %d shape(s) (%d rows x %s tokens) in %.1fs",
            len(self.shape_buckets),
            self.batch_size,
            ",".join(map(str, self.shape_buckets)),
            time.perf_counter() - started,
        )

    def _is_out_of_memory(self, e: BaseException) -> bool:
        """A device allocation failure: torch's OOM, or cuBLAS/cuDNN failing to get a workspace."""
        if isinstance(e, self._torch.OutOfMemoryError):
            return True
        text = str(e)
        return isinstance(e, RuntimeError) and any(m in text for m in ALLOC_FAILURES)

    def _launch_splitting(self, input_ids: np.ndarray, mask: np.ndarray) -> _InFlight:
        """Queue a padded micro-batch (``_with_oom_split``)."""
        return self._with_oom_split(self._launch, (input_ids, mask), _split_padded)

    def _launch_packed_splitting(self, ids: np.ndarray, lengths: np.ndarray) -> _InFlight:
        """Queue a packed micro-batch (``_with_oom_split``)."""
        return self._with_oom_split(self._launch_packed, (ids, lengths), _split_packed)

    def _with_oom_split(self, launch, batch: tuple[np.ndarray, np.ndarray], split) -> _InFlight:
        """``launch(*batch)``; on a device out-of-memory, split the batch's rows in halves and run those now.

        The retry happens after the ``except`` block is left, so the failed forward's tensors
        (held by the traceback) are freed first; the actor's micro-batch is lowered for the rest
        of its life, so later batches do not fail the same way again.
        """
        torch = self._torch
        rows, tokens = len(batch[1]), int(np.asarray(batch[1]).sum()) if batch[1].ndim == 1 else batch[1].size
        try:
            return launch(*batch)
        except Exception as e:
            if not self._is_out_of_memory(e) or rows == 1:
                raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        # out of the handler: the exception and its frames are gone
        self.oom_splits += 1
        if self.device == "cuda":
            torch.cuda.empty_cache()
        half = rows // 2
        # padded: the failed rows' half; packed (many short rows per batch): half the token budget
        lowered = half if split is _split_padded else max(1, self.batch_size // 2)
        if lowered < self.batch_size:
            logger.warning(
                "out of memory on a batch of %d rows (%d token slots) (%s); micro-batch lowered from %d to %d "
                "rows for this actor",
                rows,
                tokens,
                reason,
                self.batch_size,
                lowered,
            )
            self.batch_size = lowered
        if self.shape_buckets:
            # the warmed shapes no longer fit; new shapes would each recompile (and capture a CUDA graph)
            logger.warning("shape buckets given up after an out-of-memory: this actor runs the encoder uncompiled")
            self.shape_buckets, self.forward = None, self.model
        first, second = split(batch, half)
        done = [self._with_oom_split(launch, part, split).result() for part in (first, second)]
        return _InFlight(host=np.concatenate(done))

    def _launch_packed(self, ids: np.ndarray, lengths: np.ndarray) -> _InFlight:
        """Queue a packed micro-batch (rows laid end to end, no padding) through ``PackedEncoder``."""
        torch = self._torch
        ids_t = torch.from_numpy(ids)
        with torch.inference_mode():
            if self.device == "cuda":
                ids_t = ids_t.pin_memory()
            marks = self.clock.start(token_slots=len(ids), packed=True)
            if self.device == "cuda":
                ids_t = ids_t.to(self.device, non_blocking=True)
            self.clock.mark(marks)
            return self._to_host(self.packed(ids_t, lengths), marks)

    def _to_host(self, pooled, marks=None) -> _InFlight:
        """The pooled embeddings to host memory: at once on CPU; on CUDA a queued copy to pinned memory."""
        torch = self._torch
        self.clock.mark(marks)  # computed (on CUDA: once the stream gets here)
        if self.device != "cuda":
            host = pooled.numpy()
            self.clock.mark(marks)
            return _InFlight(host=host, clock=self.clock, marks=marks)
        host = torch.empty(pooled.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(pooled, non_blocking=True)
        self.clock.mark(marks)
        done = torch.cuda.Event()
        done.record()
        return _InFlight(host=host, done=done, clock=self.clock, marks=marks)

    def _launch(self, input_ids: np.ndarray, mask: np.ndarray) -> _InFlight:
        """Queue forward, pooling and the copy back to host; on CUDA this returns before they finish."""
        from pipeline.stages.pooling import average_pool, l2_normalize

        torch = self._torch
        ids_t = torch.from_numpy(input_ids)
        mask_t = torch.from_numpy(mask)
        with torch.inference_mode():
            if self.device == "cuda":
                ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
            marks = self.clock.start(token_slots=input_ids.size, packed=False)
            if self.device == "cuda":
                ids_t = ids_t.to(self.device, non_blocking=True)
                mask_t = mask_t.to(self.device, non_blocking=True)
            self.clock.mark(marks)
            hidden = self.forward(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            return self._to_host(l2_normalize(average_pool(hidden.float(), mask_t)), marks)


def _gather(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``values[start : start + length]`` laid into a (rows, width) int64 array padded with
    ``pad_id``, and which positions hold a token (bool): one gather, no per-row Python."""
    columns = np.arange(width)
    mask = columns[None, :] < lengths[:, None]
    positions = np.minimum(starts[:, None] + columns[None, :], max(len(values) - 1, 0))
    ids = np.where(mask, values[positions] if len(values) else pad_id, pad_id).astype(np.int64, copy=False)
    return ids, mask


def _split_padded(batch, half: int):
    input_ids, mask = batch
    return (input_ids[:half], mask[:half]), (input_ids[half:], mask[half:])


def _split_packed(batch, half: int):
    ids, lengths = batch
    cut = int(lengths[:half].sum())
    return (ids[:cut], lengths[:half]), (ids[cut:], lengths[half:])


@dataclass
class _InFlight:
    """A micro-batch's embeddings: ready (a numpy array), or being copied to pinned host memory."""

    host: Any
    done: Any = None  # torch.cuda.Event, recorded after the copy was queued
    clock: Any = None  # the actor's EncoderClock, told the micro-batch's times once it is done
    marks: Any = None

    def result(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
            self.done = None
            self.host = self.host.numpy()
        if self.clock is not None:
            self.clock.finished(self.marks)
            self.clock = None
        return self.host
