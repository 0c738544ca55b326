"""The resource plan: actors of each stage, their resources, and the fixed batch size.

Computed on the driver before the pipeline starts from (1) the cluster: GPUs, VRAM
per GPU and accelerator type (a live probe, else the scheduler profile's table,
an explicit setting always winning), CPUs; (2) the model's shape from its config;
(3) the scheduler profile for the accelerator (packaged ``pipeline/planning/scheduler.yaml``,
under a user file).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import JobConfig, PlanConfig
from pipeline.errors import UsageError
from pipeline.io.layout import CHUNK, TRUNCATE
from pipeline.planning.scheduler_config import SchedulerConfig
from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import KNOWN_SHAPES, ModelInfo, ModelSource
from pipeline.stages.spec import Resources, StageSpec
from pipeline.stages.tokenize import TokenizeStage

logger = logging.getLogger(__name__)

# the tokenizer stage of each output layout: truncate each record, or cut it into windows
TOKENIZERS = {TRUNCATE: TokenizeStage, CHUNK: ChunkTokenizeStage}

GB = 1024**3
CPU_BATCH_SIZE = 32
FEED_HEADROOM = 1.25  # the CPU side is sized for this multiple of the GPUs' expected rate
TOKENIZE_BATCH_ROWS = 1024  # rows per tokenizer call (at most one read block)
# Each encode call sorts at least this many rows by length (more rows sorted together, less
# padding: on CPU 256 -> 1024 rows cut padding from ~23% to ~11% and encode time by 15%).
SORT_WINDOW_BATCHES = 8
SORT_WINDOW_MIN_ROWS = 2048
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# e5-base-v2: the reference for the profiles' token targets and token rates
E5_BASE = KNOWN_SHAPES["intfloat/e5-base-v2"]


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """What the plan is computed for: a live cluster's resources or a described one."""

    gpus: int = 0
    gpu_memory_gb: float | None = None  # per GPU
    cpus: float = 1.0
    nodes: int = 1
    accelerator: str | None = None
    max_gpus: int | None = None  # autoscaling clusters: the most GPUs the pool may grow to
    probe: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """The job's explicit settings; None means 'let the plan decide'."""

    max_length: int = 512
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    actors_per_gpu: int | None = None
    gpu_actors: int | None = None
    tokenizer_actors: int | None = None
    encode_threads: int | None = None
    gpu_memory_gb: float | None = None
    rows_per_file: int | None = None  # an encode call never spans more rows than one output file

    @classmethod
    def from_job(cls, config: JobConfig | PlanConfig, rows_per_file: int | None = None) -> "PlanRequest":
        """From a run's or plan's settings (the same groups); ``rows_per_file`` is a run's."""
        return cls(
            max_length=config.max_length,
            dtype=config.dtype,
            device=config.device,
            batch_size=config.batch_size,
            actors_per_gpu=config.actors_per_gpu,
            gpu_actors=config.gpu_actors,
            tokenizer_actors=config.tokenizer_actors,
            encode_threads=config.encode_threads,
            gpu_memory_gb=config.gpu_memory_gb,
            rows_per_file=rows_per_file,
        )


@dataclass(frozen=True, kw_only=True)
class ResourcePlan:
    device: str
    profile: str
    dtype: str
    gpu_actors: int
    gpu_actors_min: int
    gpu_actors_max: int
    actors_per_gpu: int
    num_gpus_per_actor: float
    batch_size: int
    max_length: int
    rows_per_encode_call: int
    encode_num_cpus: float
    torch_threads: int | None
    tokenizer_actors: int
    tokenizer_num_cpus: float
    io_num_cpus: float
    gpu_memory_gb: float | None
    estimated_peak_gpu_memory_gb: float | None
    model_parameters: int
    gpu_tokens_per_s: float | None = None  # the profile's expected rate per GPU, scaled to this model
    gpu_rate_source: str | None = None  # where the profile's rate comes from (None: an unmeasured guess)
    cpu_cores_per_gpu_needed: float | None = None  # the whole job's CPU to feed one GPU at that rate
    cpu_tokens_per_core_s: float | None = None  # what that comes from: the CPU side's throughput per core
    cpu_cores_per_gpu: float | None = None  # the cluster's CPUs per GPU after Ray's reserve
    notes: tuple[str, ...] = ()

    @property
    def encoders(self) -> float:
        """What a run pays for and its rates are per: GPUs (``gpu_actors`` over ``actors_per_gpu``, a
        share of one when a plan caps actors below one per GPU), or on a cluster without GPUs the
        CPU encode actors (``gpu_actors`` counts those too)."""
        if self.device == "cuda":
            return self.gpu_actors / max(1, self.actors_per_gpu)
        return float(self.gpu_actors)

    def stage_specs(self, model: ModelSource, job: JobConfig) -> tuple[StageSpec, StageSpec]:
        """The tokenize and encode stages as the backend runs them: their settings (from the plan and
        the job's groups: embedding, chunking, encoding, writing), resources and batch sizes.

        Encode actors get the plan's dtype and the asked-for device (``auto`` resolves on the actor;
        an actor the plan gave a GPU that sees no CUDA device fails). With chunking, records are cut
        into windows instead of truncated (one row per record still, its windows as lists)."""
        layout, encoding = job.layout, job.encoding
        # Windowed runs: a Ray batch is records, each a list of windows; a share of the rows keeps a
        # batch of long documents within host memory, while the encoder still sees fixed-size
        # micro-batches of windows.
        share = layout.records_per_batch_share
        per_call = max(self.batch_size, self.rows_per_encode_call // share) if share > 1 else self.rows_per_encode_call
        tokenize_rows = min(encoding.rows_per_block, TOKENIZE_BATCH_ROWS // share)
        tokenizer = TOKENIZERS[layout]
        # the pool starts at the size the encoders need (the plan sized it), not at one actor
        tokenize_resources = Resources.sized(
            tokenizer.needs,
            num_cpus=self.tokenizer_num_cpus,
            gpu_share=0.0,
            actors=(self.tokenizer_actors, self.tokenizer_actors),
        )
        cut = {"chunk": job.chunking.settings()} if layout.windowed else {"max_length": self.max_length}
        tokenize = StageSpec(
            stage=tokenizer,
            settings={
                "model": model, "prefix": job.prefix_text, "threads": tokenize_resources.threads(tokenizer.needs), **cut
            },
            resources=tokenize_resources,
            batch_size=tokenize_rows,
        )  # fmt: skip
        encode = StageSpec(
            stage=EncodeStage,
            settings={
                "model": model,
                "batch_size": self.batch_size,
                "dtype": self.dtype,
                "device": encoding.device,
                "output_dtype": job.output_dtype,
                "torch_threads": self.torch_threads,
                "expect_gpu": self.device == "cuda",
                "memory_fraction": round(1.0 / self.actors_per_gpu, 4) if self.actors_per_gpu > 1 else None,
                "compile_model": encoding.compile,
                "attention": encoding.attention,
                "shape_buckets": encoding.shape_buckets,
            },
            resources=Resources.sized(
                EncodeStage.needs,
                num_cpus=self.encode_num_cpus,
                gpu_share=self.num_gpus_per_actor,
                actors=(self.gpu_actors_min, self.gpu_actors_max),
            ),
            batch_size=per_call,
        )
        return tokenize, encode

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def describe(self) -> str:
        if self.device == "cuda":
            where = (
                f"{self.gpu_actors} GPU actor(s) ({self.actors_per_gpu}/GPU, {self.num_gpus_per_actor:g} GPU each"
                f", pool {self.gpu_actors_min}-{self.gpu_actors_max}), profile {self.profile}, {self.dtype}, "
                f"~{self.estimated_peak_gpu_memory_gb:.1f} GB peak per actor on {self.gpu_memory_gb:g} GB GPUs"
            )
        else:
            where = f"{self.gpu_actors} CPU encode actor(s) x {self.torch_threads} threads (no GPU), {self.dtype}"
        feed = ""
        if self.cpu_cores_per_gpu_needed is not None:
            need, have = self.cpu_cores_per_gpu_needed, self.cpu_cores_per_gpu
            feed = (
                f"; CPU side ~{need:g} cores per GPU needed (~{self.cpu_tokens_per_core_s:,.0f} tokens/s per core, "
                f"measured throughput), {have:g} here"
            )
        return (
            f"plan: {where}, batch {self.batch_size} x {self.max_length} tokens, "
            f"{self.tokenizer_actors} tokenizer actor(s){feed}"
        )


# The hand model's activation peak times this is what the caching allocator reserves: block rounding,
# fragmentation on ragged batches, the micro-batch in flight. Measured on an NVIDIA H200 (2026-12-04,
# torch 2.11.0+cu130, bf16, e5-base's shape, the job's ragged encode path; jobs/gpu_quick.py's memory
# step): max_memory_reserved less the weights was 1.88x the model at 256 x 512 tokens and 1.81x at
# 1,024 x 128 (the earlier 1.2 left the estimate at 0.66x of reserved). Rounded up.
ACTIVATION_MARGIN = 2.0


def activation_phases_bytes(model: ModelInfo, batch: int, length: int, dtype: str) -> dict[str, int]:
    """Bytes live in each phase of one encode call (``batch`` rows padded to ``length``, inference).

    Layers run one after another under inference_mode, so only one layer's tensors are live, and within
    a layer only one phase's. The layer's input stays referenced through the layer. ``attention``:
    input, Q/K/V, context, and the padding mask (boolean, then additive in the compute dtype; SDPA's
    memory-efficient kernel holds no heads x length x length scores). ``ffn``: input, attention output,
    the intermediate projection and its GELU (the peak for BERT shapes: 2h + 2f per token). ``pooling``:
    the last hidden state, its float32 copy and the masked copy. Token ids and the mask (int64) are live
    throughout.
    """
    b = DTYPE_BYTES[dtype]
    h, f = model.hidden_size, model.intermediate_size
    tokens = batch * length
    ids_and_mask = tokens * 8 * 2
    return {
        "attention": tokens * 5 * h * b + batch * length * length * (1 + b) + ids_and_mask,
        "ffn": tokens * (2 * h + 2 * f) * b + ids_and_mask,
        "pooling": tokens * (h * b + 2 * h * 4) + ids_and_mask,
    }


def estimate_peak_gpu_memory_gb(
    model: ModelInfo, batch: int, length: int, dtype: str, context_gb: float = 0.6
) -> float:
    """Peak memory of one encode actor running ``batch`` rows padded to ``length`` (inference): the CUDA
    context, the weights, and the largest phase of ``activation_phases_bytes`` (phases are never live
    together; summing them overstated e5-base at 512 tokens by ~1.4x) times ``ACTIVATION_MARGIN``.
    ``jobs/gpu_memory_check.py`` compares this with ``torch.cuda.max_memory_reserved``.
    """
    weights = model.parameters * DTYPE_BYTES[dtype]
    activations = max(activation_phases_bytes(model, batch, length, dtype).values())
    return (context_gb * GB + weights + ACTIVATION_MARGIN * activations) / GB


def sort_window(batch: int, cap: int | None = None) -> int:
    """Rows an encode call sorts by length together: at least SORT_WINDOW_BATCHES batches and
    SORT_WINDOW_MIN_ROWS rows, at most ``cap`` (an output file's rows), never under one batch."""
    window = max(batch * SORT_WINDOW_BATCHES, SORT_WINDOW_MIN_ROWS)
    return max(batch, min(window, cap)) if cap else window


def _power_of_two_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _max_fitting_batch(model: ModelInfo, length: int, dtype: str, budget_gb: float, context_gb: float) -> int:
    low, high = 0, 1 << 16
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_peak_gpu_memory_gb(model, mid, length, dtype, context_gb) <= budget_gb:
            low = mid
        else:
            high = mid - 1
    return low


def make_plan(cluster: ClusterSpec, model: ModelInfo, request: PlanRequest, scheduler: SchedulerConfig) -> ResourcePlan:
    if request.max_length > model.max_tokens:
        raise UsageError(
            f"--max-length {request.max_length} is more than {model.name} takes ({model.max_tokens} tokens, "
            f"its position table)"
        )
    if cluster.gpus > 0 and request.device != "cpu":
        return _gpu_plan(cluster, model, request, scheduler)
    if request.device == "cuda":
        raise UsageError("--device cuda was asked for but the cluster has no GPU")
    return _cpu_plan(cluster, model, request)


def _gpu_plan(cluster: ClusterSpec, model: ModelInfo, req: PlanRequest, scheduler: SchedulerConfig) -> ResourcePlan:
    name, prof = scheduler.profile_for(cluster.accelerator)
    notes: list[str] = []
    memory = req.gpu_memory_gb or cluster.gpu_memory_gb or prof.memory_gb
    if memory is None:
        raise UsageError(
            f"unknown VRAM for accelerator {cluster.accelerator or '(none reported)'}; "
            "pass --gpu-memory-gb or add a profile to the scheduler config"
        )
    dtype = req.dtype if req.dtype != "auto" else ("bfloat16" if prof.bf16 else "float16")
    budget_total = memory * (1 - prof.memory_headroom)
    scale = E5_BASE.parameters / model.parameters
    target_tokens = (prof.target_tokens_per_batch or int(2048 * memory)) * scale
    wanted_batch = max(1, min(prof.max_batch_size, int(target_tokens // req.max_length)))

    per_gpu = req.actors_per_gpu or prof.actors_per_gpu
    fit = _max_fitting_batch(model, req.max_length, dtype, budget_total / per_gpu, prof.cuda_context_gb)
    if req.actors_per_gpu is None and per_gpu > 1 and fit < wanted_batch:
        notes.append(f"{per_gpu} actors/GPU would cap the batch at {fit}; using 1 actor per GPU")
        per_gpu = 1
        fit = _max_fitting_batch(model, req.max_length, dtype, budget_total, prof.cuda_context_gb)
    if fit < 1:
        raise UsageError(
            f"{model.name} does not fit in {memory:g} GB at max_length {req.max_length} "
            f"({per_gpu} actor(s)/GPU, {prof.memory_headroom:.0%} headroom)"
        )
    if req.batch_size is not None:
        if req.batch_size > fit:
            need = estimate_peak_gpu_memory_gb(model, req.batch_size, req.max_length, dtype, prof.cuda_context_gb)
            raise UsageError(
                f"--batch-size {req.batch_size} needs ~{need:.1f} GB per actor at max_length "
                f"{req.max_length} ({dtype}); with {memory:g} GB per GPU, {per_gpu} actor(s)/GPU and "
                f"{prof.memory_headroom:.0%} headroom at most {fit} fits"
            )
        batch = req.batch_size
    else:
        batch = _power_of_two_floor(min(wanted_batch, fit))
    # --max-gpus bounds the pool both ways: room to grow, and a cap on a bigger (shared) cluster
    usable = min(cluster.gpus, cluster.max_gpus) if cluster.max_gpus else cluster.gpus
    actors = req.gpu_actors or usable * per_gpu
    actors_max = max(actors, (cluster.max_gpus or cluster.gpus) * per_gpu)
    peak = estimate_peak_gpu_memory_gb(model, batch, req.max_length, dtype, prof.cuda_context_gb)

    gpu_rate = prof.gpu_tokens_per_s * scale  # tokens/s one GPU consumes for this model
    feed = FEED_HEADROOM * gpu_rate / 1e6  # millions of tokens per second to feed one GPU
    needed = math.ceil(actors_max / per_gpu * feed * prof.tokenize_cpu_s_per_m_tokens)
    spare = int(cluster.cpus - cluster.nodes * prof.cpus_reserved_per_node - actors)
    tokenizers = req.tokenizer_actors or max(1, min(needed, spare))
    if req.tokenizer_actors is None and needed > spare:
        notes.append(f"{needed} tokenizer actors would keep the GPUs fed but only {max(spare, 0)} CPUs are spare")
    # every process of the job (tokenizers, readers/writers, the encode actors' host work, driver, Ray)
    # from throughput, not CPU-seconds: the cores keep busy only cpu_utilization of the time
    per_core = prof.cpu_tokens_per_core_s()
    cores_needed = feed * 1e6 / per_core
    cores_have = (cluster.cpus - cluster.nodes * prof.cpus_reserved_per_node) / cluster.gpus
    if cores_have < cores_needed:
        notes.append(
            f"the CPU side cannot feed the GPUs: {cores_have:.1f} CPUs per GPU after Ray's reserve, but a GPU at "
            f"{gpu_rate:,.0f} tokens/s needs ~{cores_needed:.1f} (the whole job's throughput, ~{per_core:,.0f} "
            f"tokens/s per core: {prof.job_cpu_s_per_m_tokens:g} CPU-s per million tokens at "
            f"{prof.cpu_utilization:.0%} utilization, x{FEED_HEADROOM:g}); expect the GPUs at "
            f"~{cores_have / cores_needed:.0%} of their rate, or use nodes with more CPUs per GPU"
        )
    return ResourcePlan(
        device="cuda",
        profile=name,
        dtype=dtype,
        gpu_actors=actors,
        gpu_actors_min=actors,
        gpu_actors_max=actors_max,
        actors_per_gpu=per_gpu,
        num_gpus_per_actor=round(1.0 / per_gpu, 4),
        batch_size=batch,
        max_length=req.max_length,
        rows_per_encode_call=sort_window(batch, req.rows_per_file),
        encode_num_cpus=1.0,
        # the actor's one reserved core: its host-side torch ops (pinning, copies) run no thread pool
        # sized to the node's cores, whose idle threads spin on the cores the tokenizers need
        torch_threads=req.encode_threads or 1,
        tokenizer_actors=tokenizers,
        tokenizer_num_cpus=1.0,
        io_num_cpus=0.5,
        gpu_memory_gb=round(memory, 2),
        estimated_peak_gpu_memory_gb=round(peak, 2),
        model_parameters=model.parameters,
        gpu_tokens_per_s=gpu_rate,
        gpu_rate_source=prof.rate_source and f"{name} profile: {prof.rate_source}",
        cpu_cores_per_gpu_needed=round(cores_needed, 1),
        cpu_tokens_per_core_s=round(per_core),
        cpu_cores_per_gpu=round(cores_have, 1),
        notes=tuple(notes),
    )


CPU_IO_NUM_CPUS = 0.25  # a read or write task's reservation on a cluster without GPUs


def _cpu_plan(cluster: ClusterSpec, model: ModelInfo, req: PlanRequest) -> ResourcePlan:
    """No GPU: one encode actor per node using all its cores for torch; light fractional
    CPU reservations for the other stages so every stage can be scheduled."""
    cpus_per_node = max(1, int(cluster.cpus // cluster.nodes))
    actors = req.gpu_actors or cluster.nodes
    batch = req.batch_size or CPU_BATCH_SIZE
    encode_cpus = float(max(1, math.floor(cpus_per_node / 2)))
    tokenizers = req.tokenizer_actors or cluster.nodes
    # the tokenizers share what the encode actor and two read/write tasks leave of a node (at most half
    # a CPU each): more tokenizers than nodes each reserve less, so reads and writes still get scheduled
    per_node = math.ceil(tokenizers / cluster.nodes)
    room = max(0.1, cpus_per_node - encode_cpus - 2 * CPU_IO_NUM_CPUS)
    tokenizer_cpus = max(0.05, min(0.5, math.floor(room / per_node * 20) / 20))
    return ResourcePlan(
        device="cpu",
        profile="cpu",
        dtype=req.dtype if req.dtype != "auto" else "float32",
        gpu_actors=actors,
        gpu_actors_min=actors,
        gpu_actors_max=actors,
        actors_per_gpu=1,
        num_gpus_per_actor=0.0,
        batch_size=batch,
        max_length=req.max_length,
        rows_per_encode_call=sort_window(batch, req.rows_per_file),
        encode_num_cpus=encode_cpus,
        # every core for the forward: on CPU it is the bottleneck (MiniLM, 40k short passages, 2 cores:
        # 146 s with 2 threads, 242 s with 1)
        torch_threads=req.encode_threads or cpus_per_node,
        tokenizer_actors=tokenizers,
        tokenizer_num_cpus=tokenizer_cpus,
        io_num_cpus=CPU_IO_NUM_CPUS,
        gpu_memory_gb=None,
        estimated_peak_gpu_memory_gb=None,
        model_parameters=model.parameters,
    )
