import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.planning.plan import GB, ClusterSpec, PlanRequest, estimate_peak_gpu_memory_gb, make_plan
from pipeline.planning.scheduler_config import Profile, SchedulerConfig, load_scheduler_config
from pipeline.stages.model import KNOWN_SHAPES, ModelSource, offline_info
from tests.clirun import run_cli

ROOT = Path(__file__).resolve().parents[3]
BASE = KNOWN_SHAPES["intfloat/e5-base-v2"]


@pytest.fixture(scope="module")
def scheduler():
    return load_scheduler_config()  # the packaged profiles


def plan_for(scheduler, *, gpus, accelerator=None, memory=None, model=BASE, max_length=512, **request):
    cluster = ClusterSpec(
        gpus=gpus, cpus=16.0 * max(gpus, 1), nodes=max(1, gpus // 8), accelerator=accelerator, gpu_memory_gb=memory
    )
    return make_plan(cluster, model, PlanRequest(max_length=max_length, **request), scheduler)


def fits(plan, scheduler):
    _, prof = scheduler.profile_for(plan.profile if plan.profile != "default" else None)
    return plan.estimated_peak_gpu_memory_gb * plan.actors_per_gpu <= plan.gpu_memory_gb * (1 - prof.memory_headroom)


@pytest.mark.parametrize(
    "accelerator, gpus", [("T4", 4), ("L4", 2), ("A10G", 4), ("A100-40G", 8), ("A100-80G", 8), ("H100", 8), ("H200", 8)]
)
@pytest.mark.parametrize(
    "model", ["intfloat/e5-small-v2", "intfloat/e5-base-v2", "intfloat/e5-large-v2", "intfloat/multilingual-e5-large"]
)
@pytest.mark.unit
@pytest.mark.parametrize("max_length", [128, 512])
def test_every_plan_fits(scheduler, accelerator, gpus, model, max_length):
    plan = plan_for(scheduler, gpus=gpus, accelerator=accelerator, model=KNOWN_SHAPES[model], max_length=max_length)
    assert fits(plan, scheduler)
    assert plan.gpu_actors == gpus * plan.actors_per_gpu and plan.num_gpus_per_actor == 1 / plan.actors_per_gpu
    assert plan.batch_size >= 1 and plan.tokenizer_actors >= 1


@pytest.mark.unit
def test_the_memory_model_against_independent_facts():
    """Not the planner against itself: the models' sizes as their cards publish them, and one peak
    worked out by hand. e5-base-v2 at 64 rows x 512 tokens in bf16: 108,891,648 parameters (BERT-base
    without its pooler: 23,837,184 embeddings + 12 x 7,087,872) x 2 bytes; the largest phase is the
    FFN: 32,768 tokens x (2 x 768 + 2 x 3,072) x 2 bytes + ids and mask (32,768 x 16) = 503,840,768
    bytes, x 2.0 margin; plus the 0.6 GB CUDA context. And what a GPU reserved: on an H200
    (docs/gpu-h200-results.json, the job's ragged encode path) the allocator's peak stays within the
    estimate for both cells measured (before the margin was measured it covered 0.66x of it)."""
    published = {  # parameters, from each model card (with the pooler the embedder does not use)
        "intfloat/e5-small-v2": 33.4e6,
        "intfloat/e5-base-v2": 109e6,
        "intfloat/e5-large-v2": 335e6,
        "intfloat/multilingual-e5-large": 560e6,
    }
    for name, count in published.items():
        assert KNOWN_SHAPES[name].parameters == pytest.approx(count, rel=0.01), name
    assert KNOWN_SHAPES["intfloat/e5-base-v2"].parameters == 23_837_184 + 12 * 7_087_872
    by_hand = (0.6 * 2**30 + 108_891_648 * 2 + 2.0 * 503_840_768) / 2**30
    assert estimate_peak_gpu_memory_gb(BASE, 64, 512, "bfloat16", 0.6) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(1.7413, abs=1e-4)
    measured = json.loads((Path(__file__).parents[3] / "docs" / "gpu-h200-results.json").read_text())
    cells = measured["quick"]["memory"]["rows"]
    assert len(cells) == 2
    for cell in cells:  # reserved excludes the CUDA context, so the estimate is taken without it too
        estimate = estimate_peak_gpu_memory_gb(BASE, cell["batch"], cell["length"], "bfloat16", 0.0)
        assert cell["reserved_gb"] <= estimate <= 1.25 * cell["reserved_gb"], cell


@pytest.mark.unit
def test_batch_grows_with_vram_and_shrinks_with_length_and_model_size(scheduler):
    t4 = plan_for(scheduler, gpus=4, accelerator="T4")
    h100 = plan_for(scheduler, gpus=8, accelerator="H100")
    assert h100.batch_size > t4.batch_size
    assert h100.estimated_peak_gpu_memory_gb > t4.estimated_peak_gpu_memory_gb
    assert t4.dtype == "float16" and h100.dtype == "bfloat16"  # T4 has no bf16
    short = plan_for(scheduler, gpus=8, accelerator="H100", max_length=128)
    assert short.batch_size > h100.batch_size
    sizes = [
        plan_for(scheduler, gpus=8, accelerator="H100", model=KNOWN_SHAPES[f"intfloat/e5-{m}-v2"]).batch_size
        for m in ("small", "base", "large")
    ]
    assert sizes[0] > sizes[1] > sizes[2]
    # unknown accelerator: memory from the probe or the flag decides
    small = plan_for(scheduler, gpus=1, memory=16)
    big = plan_for(scheduler, gpus=1, memory=141)
    assert big.batch_size > small.batch_size and big.profile == small.profile == "default"


@pytest.mark.unit
def test_tokenizer_pool_is_sized_to_feed_the_gpus(scheduler):
    t4 = plan_for(scheduler, gpus=4, accelerator="T4")
    h100 = plan_for(scheduler, gpus=8, accelerator="H100")
    assert h100.tokenizer_actors > t4.tokenizer_actors >= 1


@pytest.mark.unit
def test_estimate_is_monotonic():
    a = estimate_peak_gpu_memory_gb(BASE, 64, 256, "bfloat16")
    assert estimate_peak_gpu_memory_gb(BASE, 128, 256, "bfloat16") > a
    assert estimate_peak_gpu_memory_gb(BASE, 64, 512, "bfloat16") > a
    assert estimate_peak_gpu_memory_gb(BASE, 64, 256, "float32") > a
    # weights alone: ~110M parameters x 2 bytes
    assert 0.15 < estimate_peak_gpu_memory_gb(BASE, 1, 1, "bfloat16", context_gb=0) < 0.3


@pytest.mark.unit
def test_batch_that_cannot_fit_is_refused_saying_what_fits(scheduler):
    with pytest.raises(UsageError, match=r"--batch-size 4096 needs ~[\d.]+ GB .* at most \d+ fits"):
        plan_for(scheduler, gpus=4, accelerator="T4", batch_size=4096)
    assert plan_for(scheduler, gpus=4, accelerator="T4", batch_size=16).batch_size == 16


@pytest.mark.unit
def test_explicit_settings_win(scheduler):
    plan = plan_for(
        scheduler, gpus=8, accelerator="H100", actors_per_gpu=1, gpu_actors=3, tokenizer_actors=5, memory=40
    )
    assert (plan.actors_per_gpu, plan.gpu_actors, plan.tokenizer_actors, plan.gpu_memory_gb) == (1, 3, 5, 40)


@pytest.mark.unit
def test_no_gpu_plans_cpu_actors(scheduler):
    plan = make_plan(ClusterSpec(gpus=0, cpus=2, nodes=1), BASE, PlanRequest(), scheduler)
    assert plan.device == "cpu" and plan.torch_threads == 2 and plan.num_gpus_per_actor == 0
    with pytest.raises(UsageError, match="no GPU"):
        make_plan(ClusterSpec(gpus=0, cpus=2), BASE, PlanRequest(device="cuda"), scheduler)


@pytest.mark.unit
def test_encode_actors_run_torch_on_the_cpus_they_reserve(scheduler):
    """A GPU actor reserves one core: a torch thread pool the size of the node would spin on the
    cores the tokenizers need. On CPU the forward is the work: every core. --encode-threads wins."""
    gpu = plan_for(scheduler, gpus=8, accelerator="H100")
    assert (gpu.encode_num_cpus, gpu.torch_threads) == (1.0, 1)
    assert (
        gpu.stage_specs(ModelSource(name_or_path="m"), JobConfig(inputs=("in",), output="out"))[1].settings[
            "torch_threads"
        ]
        == 1
    )
    assert plan_for(scheduler, gpus=8, accelerator="H100", encode_threads=3).torch_threads == 3
    cpu = make_plan(ClusterSpec(gpus=0, cpus=8, nodes=1), BASE, PlanRequest(encode_threads=2), scheduler)
    assert cpu.torch_threads == 2


@pytest.mark.unit
def test_the_cpu_side_is_sized_with_the_whole_jobs_cpu_per_token(scheduler):
    """Tokenizer actors from their own CPU per token; cores per GPU from the whole job's (every
    process); a cluster too thin in CPUs per GPU gets a note saying how far the GPUs will fall short."""
    _, h100 = scheduler.profile_for("H100")
    wide = make_plan(ClusterSpec(gpus=8, cpus=208, nodes=1, accelerator="H100"), BASE, PlanRequest(), scheduler)
    feed = 1.25 * h100.gpu_tokens_per_s / 1e6  # millions of tokens/s per GPU, with the plan's headroom
    assert wide.tokenizer_actors == math.ceil(8 * feed * h100.tokenize_cpu_s_per_m_tokens)
    # from throughput per core: utilization / CPU-s per token (H100 at 1.3M tokens/s, 4.5 CPU-s per
    # million tokens at 85%: 1.625M tokens/s to feed / 188,889 tokens/s per core = 8.6 cores)
    assert (h100.gpu_tokens_per_s, h100.job_cpu_s_per_m_tokens, h100.cpu_utilization) == (1_300_000, 4.5, 0.85)
    assert wide.cpu_tokens_per_core_s == 188_889
    assert wide.cpu_cores_per_gpu_needed == 8.6
    assert wide.cpu_cores_per_gpu == round((208 - h100.cpus_reserved_per_node) / 8, 1)
    assert not any("cannot feed" in n for n in wide.notes)
    assert "~8.6 cores per GPU needed (~188,889 tokens/s per core, measured throughput)" in wide.describe()
    thin = make_plan(ClusterSpec(gpus=8, cpus=64, nodes=1, accelerator="H100"), BASE, PlanRequest(), scheduler)
    (note,) = [n for n in thin.notes if "cannot feed" in n]
    assert f"{thin.cpu_cores_per_gpu:.1f} CPUs per GPU" in note
    assert f"~{thin.cpu_cores_per_gpu / thin.cpu_cores_per_gpu_needed:.0%} of their rate" in note


@pytest.mark.unit
def test_cores_per_gpu_come_from_the_profiles_own_throughput_per_core():
    """A profile's own figures, not the defaults: 1M tokens/s per GPU (1.25M to feed), 4 CPU-s per
    million tokens at 50% utilization = 125,000 tokens/s per core: 10 cores per GPU."""
    slow = Profile.build(
        {"memory_gb": 40, "gpu_tokens_per_s": 1_000_000, "job_cpu_s_per_m_tokens": 4.0, "cpu_utilization": 0.5}
    )
    assert slow.cpu_tokens_per_core_s() == 125_000
    config = SchedulerConfig(defaults=slow, profiles={"X": slow}, source="test")
    plan = make_plan(ClusterSpec(gpus=2, cpus=18, nodes=1, accelerator="X"), BASE, PlanRequest(), config)
    assert plan.cpu_cores_per_gpu_needed == 10.0 and plan.cpu_cores_per_gpu == 8.5  # (18 - 1) / 2
    (note,) = [n for n in plan.notes if "cannot feed" in n]
    assert "~125,000 tokens/s per core: 4 CPU-s per million tokens at 50% utilization" in note
    with pytest.raises(UsageError, match="cpu_utilization must be in"):
        Profile.build({"cpu_utilization": 1.5})


@pytest.mark.unit
def test_a_profile_with_the_old_per_cpu_tokenizer_rate_still_loads(caplog):
    old = Profile.build({"tokenizer_tokens_per_s_per_cpu": 500_000})
    assert old.tokenize_cpu_s_per_m_tokens == 2.0 and "tokenize_cpu_s_per_m_tokens" in caplog.text
    # the earlier packaged default (150k per CPU-s = 6.7 CPU-s per million tokens) still loads: the whole
    # job's figure rises to the tokenizers' own
    earlier = Profile.build({"tokenizer_tokens_per_s_per_cpu": 150_000}, base=Profile())
    assert earlier.tokenize_cpu_s_per_m_tokens == earlier.job_cpu_s_per_m_tokens == 6.667
    with pytest.raises(UsageError, match="includes the tokenizers"):
        Profile.build({"tokenize_cpu_s_per_m_tokens": 4.0, "job_cpu_s_per_m_tokens": 3.0})
    with pytest.raises(UsageError, match="positive number"):
        Profile.build({"tokenizer_tokens_per_s_per_cpu": 0})


@pytest.mark.unit
def test_scheduler_profiles(scheduler, tmp_path):
    assert scheduler.profile_for("Tesla T4")[0] == "T4"
    assert scheduler.profile_for("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert scheduler.profile_for("a100-80g")[0] == "A100-80G"
    assert scheduler.profile_for("MI300X")[0] == "default"
    bad = tmp_path / "s.yaml"
    bad.write_text("profiles:\n  T4: {memory_gb: 16, batchsize: 3}\n")
    with pytest.raises(UsageError, match="unknown key.*batchsize.*valid keys"):
        load_scheduler_config(str(bad))
    with pytest.raises(UsageError, match="memory_headroom"):
        Profile(memory_headroom=0.95)


@pytest.mark.unit
def test_offline_model_shapes(tmp_path, minilm_path):
    assert offline_info("intfloat/e5-large-v2").hidden_size == 1024
    assert offline_info(minilm_path).num_layers == 6
    with pytest.raises(UsageError, match="unknown model"):
        offline_info("someone/else")


def cli(*args):
    return run_cli(*args, env={"RAY_ADDRESS": ""})


@pytest.mark.unit
def test_plan_command_offline_for_4xT4_and_8xH100():
    for args, accel in (
        (["--gpus", "4", "--accelerator", "T4", "--cpus", "32", "--nodes", "4"], "T4"),
        (["--gpus", "8", "--accelerator", "H100", "--cpus", "208"], "H100"),
    ):
        result = cli("plan", *args, "--json")
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        for key in (
            "gpu_actors",
            "actors_per_gpu",
            "num_gpus_per_actor",
            "batch_size",
            "estimated_peak_gpu_memory_gb",
            "gpu_memory_gb",
            "tokenizer_actors",
        ):
            assert key in plan
        assert plan["profile"] == accel and plan["estimated_peak_gpu_memory_gb"] < plan["gpu_memory_gb"]
    human = cli("plan", "--gpus", "4", "--accelerator", "T4", "--cpus", "32")
    assert human.returncode == 0 and "batch" in human.stdout and "tokenizer actor" in human.stdout
    refused = cli("plan", "--gpus", "4", "--accelerator", "T4", "--batch-size", "100000")
    assert refused.returncode == 2 and "at most" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.e2e
def test_live_probe_on_a_fake_gpu_cluster_and_the_job_uses_the_plan(tmp_path, minilm_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "scripts" / "fake_gpu_cluster.py"),
            str(corpus),
            str(tmp_path / "out"),
            minilm_path,
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    plan = report["plan"]
    assert report["status"] == "complete" and report["rows"] == 20
    assert plan["device"] == "cuda" and plan["profile"] == "T4" and plan["gpu_actors"] == 2
    assert (plan["gpu_actors_min"], plan["gpu_actors_max"]) == (2, 4)  # --max-gpus 4: room to grow
    assert plan["gpu_memory_gb"] == 16  # the probe found no CUDA device: the T4 profile's table
    assert "plan: 2 GPU actor(s)" in result.stderr  # logged
    assert "no CUDA device is visible" in result.stderr  # the actors say they encode on CPU


@pytest.mark.unit
def test_max_gpus_bounds_the_pool_both_ways(scheduler):
    def bounds(gpus, max_gpus):
        cluster = ClusterSpec(gpus=gpus, cpus=64.0, accelerator="H100", max_gpus=max_gpus)
        plan = make_plan(cluster, BASE, PlanRequest(), scheduler)
        return plan.gpu_actors_min // plan.actors_per_gpu, plan.gpu_actors_max // plan.actors_per_gpu

    assert bounds(2, None) == (2, 2)  # fixed cluster: what is there
    assert bounds(2, 8) == (2, 8)  # autoscaling: start with 2 GPUs, grow to 8
    assert bounds(8, 2) == (2, 2)  # a bigger, shared cluster: use at most 2


@pytest.mark.unit
def test_a_user_file_is_laid_over_the_packaged_profiles(tmp_path, monkeypatch):
    override = tmp_path / "mine.yaml"
    override.write_text(
        "defaults:\n  memory_headroom: 0.3\nprofiles:\n  H100:\n    actors_per_gpu: 3\n  MyGPU:\n    memory_gb: 24\n"
    )
    mine = load_scheduler_config(str(override))
    packaged = load_scheduler_config()
    assert mine.profiles["H100"].actors_per_gpu == 3
    assert mine.profiles["H100"].memory_gb == packaged.profiles["H100"].memory_gb  # untouched keys kept
    assert mine.profiles["MyGPU"].memory_gb == 24 and mine.defaults.memory_headroom == 0.3
    assert set(packaged.profiles) < set(mine.profiles)
    monkeypatch.setenv("E5_EMBED_SCHEDULER_CONFIG", str(override))
    assert load_scheduler_config().profiles["H100"].actors_per_gpu == 3


@pytest.mark.unit
def test_estimate_takes_the_largest_phase_not_their_sum():
    """e5-base in bf16: a hand model of one layer's live tensors peaks at the FFN's GELU (input,
    attention output, intermediate and its activation: 2h + 2f = 7,680 values, 15.4 kB per token);
    the attention phase (5h values and the mask) is smaller. The old estimate summed the phases: ~29 kB per token."""
    from pipeline.planning.plan import ACTIVATION_MARGIN, activation_phases_bytes

    phases = activation_phases_bytes(BASE, 64, 512, "bfloat16")
    tokens = 64 * 512
    assert max(phases, key=phases.get) == "ffn" and phases["ffn"] == tokens * (7680 * 2 + 16)
    per_token = (
        (
            estimate_peak_gpu_memory_gb(BASE, 64, 512, "bfloat16", context_gb=0)
            - estimate_peak_gpu_memory_gb(BASE, 0, 512, "bfloat16", context_gb=0)
        )
        * GB
        / tokens
    )
    assert per_token == pytest.approx(ACTIVATION_MARGIN * (7680 * 2 + 16))
    assert per_token < ACTIVATION_MARGIN * sum(phases.values()) / tokens / 1.5  # not the sum of the phases
