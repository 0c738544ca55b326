"""A plan's rates measured on the target: tokens/s per accelerator with its spread, padding share,
peak memory and the CPU side's cost, in a file the plan reads (``e5-embed plan --calibrate``).

:func:`measure` runs the job's own stages in one process on the device it finds, with the plan's
settings (dtype, attention, shape buckets, micro-batch, threads), over passages drawn from the
corpus's sample, for a bounded time: a warm-up call, then ``repeats`` timed passes of about equal
time. Tokens/s counts real tokens (padding excluded), as the job's rate does. The calibration names
what it was measured with (model digest, torch, CUDA, driver, device); :meth:`Calibration.stale`
says why it no longer applies, and a stale one is refused, never silently used.

Where the rates used by ``plan`` come from is said with every number (:func:`rate_source`):
"measured <date> on <device>, <n> repeats, ±x%", "from run <id> of <output>", or "profile
guess, unmeasured".
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.errors import UsageError, step_failed
from pipeline.io.storage import Storage
from pipeline.stages.embedder import records_table
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage

logger = logging.getLogger(__name__)

FORMAT = "e5-embed-calibration/1"
DEFAULT_MAX_SECONDS = 120.0
SPREAD_WARNING = 0.10  # repeats that disagree by more than ±10%: said, with the number


@dataclass(frozen=True, kw_only=True)
class Calibration:
    measured_at: str
    device_kind: str  # cuda | cpu
    device_name: str  # torch's name of the device (the GPU model), or the CPU's
    model: str
    model_sha: str | None
    torch: str
    cuda: str | None
    driver: str | None
    dtype: str
    attention: str
    batch_size: int
    max_length: int
    threads: int | None
    repeats: int
    tokens_per_s: float  # median over the repeats, one encoder (one GPU, or one CPU encode actor)
    per_repeat: list[float]
    spread: float  # the largest relative distance of a repeat from the median
    padding_share: float  # padded token slots that hold no token, in the calls timed
    peak_memory_gb: float  # the GPU's peak allocated memory; on CPU the process's peak RSS
    tokenize_cpu_s_per_m_tokens: float  # the tokenizer's CPU-seconds per million tokens on this node type
    sample_records: int
    sample_mean_tokens: float
    setup_s: float = 0.0  # the encoder's start: model load and first call (a run pays it once per actor)
    seconds: float  # what the calibration itself took
    notes: list[str] = field(default_factory=list)
    format: str = FORMAT

    def provenance(self) -> str:
        return (
            f"measured {self.measured_at[:10]} on {self.device_name}, {self.repeats} repeats, ±{self.spread:.1%}"
            f" ({self.model_sha or self.model}, {self.dtype})"
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "Calibration":
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(
                    f"format {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r}"
                )
            _check_fields(data)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError) as e:
            raise UsageError(
                f"{where} is not a usable calibration file ({type(e).__name__}: {str(e)[:200]}); make a new one with "
                "`e5-embed plan --calibrate --calibration FILE`"
            ) from e

    def stale(
        self,
        *,
        model_sha: str | None,
        torch_version: str,
        device_name: str | None,
        dtype: str | None = None,
        attention: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
    ) -> list[str]:
        """Why this calibration does not describe the run at hand (empty: it does): another model,
        torch or device, or another compute dtype, attention mode or batch shape (each changes the
        rate: bf16 runs ~2-4x float32 on a GPU, packed ~1.7x padded)."""
        reasons = []
        if model_sha is not None and self.model_sha != model_sha:
            reasons.append(f"model {self.model_sha} (now {model_sha})")
        if self.torch != torch_version:
            reasons.append(f"torch {self.torch} (now {torch_version})")
        if device_name is not None and self.device_name != device_name:
            reasons.append(f"device {self.device_name} (now {device_name})")
        for name, now in (("dtype", dtype), ("attention", attention), ("batch size", batch_size),
                          ("max length", max_length)):  # fmt: skip
            was = getattr(self, name.replace(" ", "_"))
            if now is not None and was != now:
                reasons.append(f"{name} {was} (now {now})")
        return reasons


def check_describes(
    calibration: Calibration,
    where: str,
    plan: Any,
    *,
    model_sha: str | None,
    attention: str,
    max_length: int,
    torch_version: str,
) -> None:
    """Refuse (exit 2, saying each difference) a calibration that does not describe ``plan``: another
    model, torch, device class or GPU profile, dtype, attention, batch size or max length."""
    stale = calibration.stale(
        model_sha=model_sha,
        torch_version=torch_version,
        device_name=None,
        dtype=plan.dtype,
        attention=attention,
        batch_size=plan.batch_size,
        max_length=max_length,
    )
    if (plan.device == "cuda") != (calibration.device_kind == "cuda"):
        stale.append(f"device {calibration.device_name} (now {'a GPU' if plan.device == 'cuda' else 'CPU'})")
    elif plan.device == "cuda" and plan.profile.lower() not in calibration.device_name.lower().replace(" ", "-"):
        stale.append(f"device {calibration.device_name} (now {plan.profile} (the plan's profile))")
    if stale:
        raise UsageError(
            f"the calibration {where} was made with {'; '.join(stale)}: it does not describe this plan; calibrate "
            "again (--calibrate)"
        )


def _number(data: Mapping[str, Any], key: str, *, positive: bool = False, below: float | None = None) -> None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} is {value!r}, not a finite number")
    if value < 0 or (positive and value == 0) or (below is not None and value >= below):
        bounds = "> 0" if positive else ">= 0"
        raise ValueError(f"{key} is {value!r}, must be {bounds}" + (f" and < {below:g}" if below else ""))


def _check_fields(data: Mapping[str, Any]) -> None:
    """Every field of a calibration file checked before a plan uses it: a rate that is NaN, infinite,
    zero, negative or a string, a negative spread, an unknown dtype or attention mode."""
    from pipeline.stages.e5 import ATTENTIONS, DTYPES

    for key in ("measured_at", "device_name", "model", "torch"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"{key} is {data.get(key)!r}, not a string")
    if data.get("device_kind") not in ("cuda", "cpu"):
        raise ValueError(f"device_kind is {data.get('device_kind')!r}, not cuda or cpu")
    if data.get("dtype") not in DTYPES or data.get("dtype") == "auto":
        raise ValueError(f"dtype is {data.get('dtype')!r}, not one of {', '.join(DTYPES[1:])}")
    if data.get("attention") not in ATTENTIONS:  # what the encoder ran (auto resolved)
        raise ValueError(f"attention is {data.get('attention')!r}, not one of {', '.join(ATTENTIONS)}")
    for key in ("batch_size", "max_length", "repeats", "sample_records"):
        if isinstance(data.get(key), bool) or not isinstance(data.get(key), int) or data[key] < 1:
            raise ValueError(f"{key} is {data.get(key)!r}, not a positive integer")
    for key in ("tokens_per_s", "sample_mean_tokens"):
        _number(data, key, positive=True)
    for key in ("peak_memory_gb", "tokenize_cpu_s_per_m_tokens", "seconds"):
        _number(data, key)
    _number(data, "spread", below=1.0)
    _number(data, "padding_share", below=1.0)
    if "setup_s" in data:
        _number(data, "setup_s")
    repeats = data.get("per_repeat")
    if not isinstance(repeats, list) or not repeats:
        raise ValueError(f"per_repeat is {repeats!r}, not a list of rates")
    for i, _ in enumerate(repeats):
        _number({f"per_repeat[{i}]": repeats[i]}, f"per_repeat[{i}]", positive=True)


def save(calibration: Calibration, uri: str, storage_options: Mapping[str, Any]) -> None:
    """Write the calibration file (a local path or an object-storage URI)."""
    folder, _, name = uri.rstrip("/").rpartition("/")
    storage = Storage(folder or ".", storage_options)
    try:
        storage.write_bytes_atomic(storage.join(name), calibration.to_json())
    except Exception as e:
        raise step_failed(f"cannot write the calibration file {uri}", e) from e


def load(uri: str, storage_options: Mapping[str, Any]) -> Calibration:
    folder, _, name = uri.rstrip("/").rpartition("/")
    storage = Storage(folder or ".", storage_options)
    try:
        raw = storage.read_bytes(storage.join(name))
    except FileNotFoundError as e:
        raise UsageError(f"no calibration file at {uri}; make one with `e5-embed plan --calibrate`") from e
    except Exception as e:
        raise step_failed(f"cannot read the calibration file {uri}", e) from e
    return Calibration.from_json(raw, uri)


def padding_share(lengths: Sequence[int], batch_size: int, rows_per_call: int, pad_multiple: int) -> float:
    """The share of token slots that are padding when rows arrive ``rows_per_call`` at a time and each
    call is cut, longest first, into micro-batches of ``batch_size`` rows (the encode stage's way)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = real = 0
    for start in range(0, len(lengths), rows_per_call):
        call = np.sort(lengths[start : start + rows_per_call])[::-1]
        for b in range(0, len(call), batch_size):
            group = call[b : b + batch_size]
            width = -(-int(group[0]) // pad_multiple) * pad_multiple
            slots += width * len(group)
            real += int(group.sum())
    return 1.0 - real / slots if slots else 0.0


def _versions(device_kind: str) -> tuple[str, str | None, str | None, str]:
    import platform

    import torch

    cuda = torch.version.cuda if device_kind == "cuda" else None
    driver = None
    name = platform.machine()
    if device_kind == "cuda":
        name = torch.cuda.get_device_name(0)
        try:
            import subprocess

            driver = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                .stdout.split("\n")[0]
                .strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            driver = None
    else:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    return torch.__version__, cuda, driver, name


def measure(
    model: ModelSource,
    texts: Sequence[str],
    *,
    model_sha: str | None,
    prefix: str,
    max_length: int,
    batch_size: int,
    rows_per_call: int,
    dtype: str = "auto",
    device: str = "auto",
    attention: str = "auto",
    shape_buckets: tuple[int, ...] | None = None,
    torch_threads: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    repeats: int = 3,
) -> Calibration:
    """Tokens/s of the job's encode stage on this process's device, over ``texts`` (the corpus's
    passages), within about ``max_seconds``: a warm-up call, then ``repeats`` passes of equal time."""
    if not texts:
        raise UsageError("no passage to calibrate with: the corpus sample holds no embeddable record")
    started = time.perf_counter()
    records = records_table(list(texts), source="calibration")
    cpu0 = time.process_time()
    tokens = TokenizeStage(model=model, prefix=prefix, max_length=max_length)(records)
    tokenize_cpu = time.process_time() - cpu0
    lengths = tokens["n_tokens"].to_numpy()
    stage = EncodeStage(
        model=model,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        attention=attention,
        shape_buckets=shape_buckets,
        torch_threads=torch_threads,
    )
    stage.setup()
    # timed in calls of a few micro-batches, so the time bound holds whatever the plan's call size;
    # the padding share is computed for the plan's own call size (below)
    step = max(1, min(rows_per_call, 2 * batch_size))  # two micro-batches: one in flight while one is padded
    order = np.random.default_rng(0).permutation(tokens.num_rows)  # the corpus's length mix in every call
    tokens_shuffled = tokens.take(order)
    calls = [tokens_shuffled.slice(s, step) for s in range(0, tokens.num_rows, step)]
    stage(calls[0].slice(0, batch_size))  # warm-up: allocator, kernels, the first shapes
    warm = time.perf_counter() - started
    setup_s = warm - tokenize_cpu
    per_repeat_s = max(0.5, (max_seconds - warm) / repeats)
    rates: list[float] = []
    i = 0
    for _ in range(repeats):
        t0, done = time.perf_counter(), 0
        while True:  # whole calls, cycling through the sample, until this repeat's time is spent
            call = calls[i % len(calls)]
            i += 1
            stage(call)
            done += int(np.asarray(call["n_tokens"]).sum())
            if time.perf_counter() - t0 >= per_repeat_s:
                break
        if stage.device == "cuda":
            import torch

            torch.cuda.synchronize()
        rates.append(done / (time.perf_counter() - t0))
    median = float(np.median(rates))
    spread = float(max(abs(r - median) for r in rates) / median) if median else 0.0
    if stage.device == "cuda":
        import torch

        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB
    torch_version, cuda, driver, name = _versions(stage.device)
    notes = []
    if spread > SPREAD_WARNING:
        notes.append(
            f"the repeats disagree by ±{spread:.0%} (more than ±{SPREAD_WARNING:.0%}): the device was shared "
            "or throttled; calibrate again on an idle node"
        )
    calibration = Calibration(
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        device_kind=stage.device,
        device_name=name,
        model=model.name_or_path,
        model_sha=model_sha,
        torch=torch_version,
        cuda=cuda,
        driver=driver,
        dtype=stage.dtype,
        attention=stage.attention,
        batch_size=batch_size,
        max_length=max_length,
        threads=torch_threads,
        repeats=repeats,
        tokens_per_s=round(median, 1),
        per_repeat=[round(r, 1) for r in rates],
        spread=round(spread, 4),
        # under the calls timed (the shuffled sample, ``step`` rows each): real tokens/s over (1 - this)
        # is the encoder's token slots per second, which the plan carries over to a corpus's own padding
        padding_share=round(padding_share(lengths[order], batch_size, step, stage.pad_multiple), 4),
        peak_memory_gb=round(peak, 3),
        tokenize_cpu_s_per_m_tokens=round(tokenize_cpu / max(1, int(lengths.sum())) * 1e6, 3),
        sample_records=len(texts),
        sample_mean_tokens=round(float(lengths.mean()), 1),
        setup_s=round(setup_s, 2),
        seconds=round(time.perf_counter() - started, 2),
        notes=notes,
    )
    for note in notes:
        logger.warning("calibration: %s", note)
    return calibration


@dataclass(frozen=True)
class RateSource:
    """A rate per encoder (one GPU, or one CPU encode actor) and where it comes from."""

    tokens_per_s: float
    source: str  # said with every number the rate makes
    spread: float = 0.0  # relative: the cost and wall time come as a range of ±spread
    measured: bool = False


def profile_rate(tokens_per_s: float | None, source: str | None = None) -> RateSource | None:
    """The scheduler profile's rate: measured on a machine of that kind (``source`` says where and
    how), or a guess. Either way not this cluster, so never ``measured``: calibrate for that."""
    if not tokens_per_s:
        return None
    if source:
        return RateSource(tokens_per_s, f"{source}; not this cluster: calibrate with `e5-embed plan --calibrate`")
    return RateSource(
        tokens_per_s,
        "profile guess, unmeasured (measured on an H200: 1.36M tokens/s for the whole job, padded, bf16; "
        "published for BERT-base: ~1.6M on an H200, 0.59-1.18M on an A100; calibrate with "
        "`e5-embed plan --calibrate`)",
    )


def calibrated_rate(calibration: Calibration) -> RateSource:
    return RateSource(calibration.tokens_per_s, calibration.provenance(), calibration.spread, measured=True)


MIN_RATE_TOKENS = 10_000  # fewer tokens than this measure the encoders' start-up, not their rate


def run_rate(manifest_runs: Sequence[Mapping[str, Any]], output: str) -> RateSource:
    """The encode rate per encoder of the last complete run recorded in an output's manifest that
    encoded enough to measure one (``MIN_RATE_TOKENS``): its tokens over its embed phase. A later run
    that encoded too little (a small ``--update``) is passed over, and the source says so."""
    passed: list[str] = []
    for run in reversed(manifest_runs):
        plan = run.get("plan") or {}
        actors = plan.get("gpu_actors") or 0
        per_gpu = max(1, int(plan.get("actors_per_gpu") or 1))
        encoders = actors / per_gpu if plan.get("device") == "cuda" else actors
        if run.get("status") != "complete" or not encoders:
            continue
        tokens = int(run.get("tokens") or 0)
        seconds = float((run.get("phases") or {}).get("embed") or 0.0)
        if tokens < MIN_RATE_TOKENS or not seconds > 0:
            passed.append(f"run {run.get('run_id')} encoded {tokens:,} tokens, too few to measure a rate")
            continue
        later = f"; {'; '.join(passed)}" if passed else ""
        return RateSource(
            tokens / seconds / encoders,
            f"from run {run.get('run_id')} of {output} ({str(run.get('ended_at'))[:10]}, {tokens:,} tokens over "
            f"{seconds:g} s of its embed phase){later}",
            measured=True,
        )
    raise UsageError(
        f"{output} records no complete run that encoded at least {MIN_RATE_TOKENS:,} tokens, enough to measure a "
        f"rate ({'; '.join(passed) or 'none complete'}); plan with --calibrate --calibration FILE instead"
    )
