"""The Ray session's environment for a cluster the job starts itself."""

import os

import pytest

from pipeline.backend.dataset import LOCAL_RAYLET_ENV, _local_raylet_env
from pipeline.stages.model import ModelSource

pytestmark = pytest.mark.unit


def test_the_local_raylet_env_is_set_while_ray_starts_then_removed(monkeypatch):
    (key,) = LOCAL_RAYLET_ENV
    monkeypatch.delenv(key, raising=False)
    with _local_raylet_env(LOCAL_RAYLET_ENV):
        assert int(os.environ[key]) >= 2 * (os.cpu_count() or 1)  # idle task workers kept, not restarted
    assert key not in os.environ


def test_an_operators_own_value_wins_and_is_kept(monkeypatch):
    (key,) = LOCAL_RAYLET_ENV
    monkeypatch.setenv(key, "3")
    with _local_raylet_env(LOCAL_RAYLET_ENV):
        assert os.environ[key] == "3"
    assert os.environ[key] == "3"


def test_a_run_sets_ray_datas_context_for_its_length_only():
    """The run's progress-bar choice holds while it runs; the process's own settings are back after
    (a notebook or an Airflow worker that runs several jobs keeps its own)."""
    from ray.data import DataContext

    from pipeline.backend.dataset import data_context

    ctx = DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.enable_operator_progress_bars, ctx.enable_auto_log_stats)
    with data_context(progress=not before[0]):
        assert ctx.enable_progress_bars is (not before[0]) and ctx.enable_auto_log_stats is False
    assert (ctx.enable_progress_bars, ctx.enable_operator_progress_bars, ctx.enable_auto_log_stats) == before


def test_a_stopped_run_lets_batches_through_empty_with_the_stages_schema(minilm_path):
    """Past the run's stop request a stage works on nothing: the rows read ahead reach no file (the
    next run reads them again), and what flows on has the stage's own output schema."""
    from pipeline.backend.timed_stage import timed
    from pipeline.io import schemas
    from pipeline.stages.embedder import records_table
    from pipeline.stages.model import ModelSource
    from pipeline.stages.tokenize import TokenizeStage

    stopped = [False]
    wrapped = timed(TokenizeStage, "tokenize")(
        TokenizeStage, None, lambda: stopped[0], model=ModelSource(name_or_path=minilm_path), prefix="", max_length=32
    )
    block = records_table(["one record", "two records"])
    assert wrapped(block).num_rows == 2
    stopped[0] = True
    out = wrapped(block)
    assert out.num_rows == 0 and out.schema == schemas.TOKENIZED


def test_gpu_actors_are_started_with_the_encode_stages_process_env_and_the_jobs_own_value_stands(monkeypatch):
    """The allocator setting belongs to the GPU actor's process, set by the backend as Ray starts it
    (runtime_env), not by the stage's constructor in whatever process builds it."""
    from pipeline.backend.dataset import apply_stage
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.spec import Resources, StageSpec
    from pipeline.stages.tokenize import TokenizeStage

    class Recorder:
        def map_batches(self, fn, **kwargs):
            self.kwargs = kwargs
            return self

    def remote_env(stage, settings, gpus):
        spec = StageSpec(stage=stage, settings=settings, resources=Resources(num_gpus=gpus), batch_size=8)
        return apply_stage(Recorder(), spec).kwargs.get("runtime_env")

    encode = {"model": ModelSource(name_or_path="m"), "batch_size": 8}
    tokenize = {"model": ModelSource(name_or_path="m"), "prefix": "passage: ", "max_length": 512}
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert remote_env(EncodeStage, encode, 0.5) == {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}
    assert remote_env(EncodeStage, encode, 0) is None  # a CPU encode actor: no CUDA, no extra env
    assert remote_env(TokenizeStage, tokenize, 0) is None
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")  # the job's own choice
    assert remote_env(EncodeStage, encode, 0.5) is None


def test_constructing_an_encode_stage_changes_no_process_setting(monkeypatch, minilm_path):
    import pipeline.stages.encode as encode

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(encode, "resolve_device", lambda device: "cpu")
    before = dict(os.environ)
    encode.EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="auto")
    assert dict(os.environ) == before
