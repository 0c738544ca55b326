"""Stage specs are checked against the stage's constructor when the plan makes them."""

import pytest

from pipeline.config import JobConfig
from pipeline.stages.spec import ENCODE, Resources, StageSpec

pytestmark = pytest.mark.unit


class Upper:
    role = ENCODE

    def __init__(self, *, column: str, factor: int = 1):
        self.column, self.factor = column, factor

    def __call__(self, table):
        return table


class Nameless(Upper):
    role = None  # plays no role telemetry knows


def test_a_spec_binds_its_settings_to_the_stage_at_plan_time():
    settings = {"column": "text", "factor": 2}
    spec = StageSpec(stage=Upper, settings=settings, resources=Resources(), batch_size=8)
    settings["factor"] = 3  # the spec holds its own copy
    assert spec.kwargs() == {"column": "text", "factor": 2} and spec.name == "Upper" and spec.role == ENCODE
    with pytest.raises(TypeError, match="the settings do not fit Upper"):  # 'column' renamed on one side only
        StageSpec(stage=Upper, settings={"col": "text"}, resources=Resources(), batch_size=8)
    with pytest.raises(TypeError, match="Nameless.role must be one of tokenize, encode"):
        StageSpec(stage=Nameless, settings={"column": "text"}, resources=Resources(), batch_size=8)
    with pytest.raises(ValueError):
        Resources(min_actors=3, max_actors=2)


def test_the_plan_makes_specs_its_stages_accept(minilm_path):
    from pipeline.planning.plan import ClusterSpec, PlanRequest, make_plan
    from pipeline.planning.scheduler_config import load_scheduler_config
    from pipeline.stages.model import ModelSource

    source = ModelSource(name_or_path=minilm_path)
    plan = make_plan(ClusterSpec(gpus=0, cpus=4), source.info(), PlanRequest(), load_scheduler_config())
    tokenize, encode = plan.stage_specs(source, JobConfig(inputs=("in",), output="out"))
    assert tokenize.batch_size == 1024 and encode.batch_size == plan.rows_per_encode_call
    assert encode.kwargs()["dtype"] == plan.dtype == "float32" and encode.resources.num_gpus == 0


def test_chunked_runs_get_the_chunk_tokenizer_and_smaller_ray_batches(minilm_path):
    from pipeline.planning.plan import ClusterSpec, PlanRequest, make_plan
    from pipeline.planning.scheduler_config import load_scheduler_config
    from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
    from pipeline.stages.chunking import ChunkSettings
    from pipeline.stages.model import ModelSource

    source = ModelSource(name_or_path=minilm_path)
    plan = make_plan(ClusterSpec(gpus=0, cpus=4), source.info(), PlanRequest(), load_scheduler_config())
    chunk = ChunkSettings(tokens=256)
    tokenize, encode = plan.stage_specs(source, JobConfig(inputs=("in",), output="out", chunk_tokens=256))
    assert tokenize.stage is ChunkTokenizeStage and tokenize.kwargs()["chunk"] == chunk
    assert tokenize.batch_size == 128  # records, each a list of windows
    assert plan.batch_size <= encode.batch_size == max(plan.batch_size, plan.rows_per_encode_call // 8)


def test_stages_declare_what_an_actor_needs_and_the_plan_sizes_it():
    """The stage classes say what kind of resource they need; the plan's sizes fill it in."""
    from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.spec import Needs, Resources
    from pipeline.stages.tokenize import TokenizeStage

    assert EncodeStage.needs == Needs(
        accelerator=True, gpu_process_env=(("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),)
    )
    assert TokenizeStage.needs == ChunkTokenizeStage.needs == Needs(threads_from_cpus=True)
    encode = Resources.sized(EncodeStage.needs, num_cpus=1.0, gpu_share=0.5, actors=(16, 32))
    assert (encode.num_gpus, encode.min_actors, encode.max_actors, encode.threads(EncodeStage.needs)) == (
        0.5,
        16,
        32,
        None,
    )
    tokenize = Resources.sized(TokenizeStage.needs, num_cpus=2.5, gpu_share=0.5, actors=(4, 4))
    assert tokenize.num_gpus == 0.0 and tokenize.threads(TokenizeStage.needs) == 3  # never a GPU; ceil(2.5) threads
    assert (
        Resources.sized(TokenizeStage.needs, num_cpus=0.25, gpu_share=0, actors=(2, 2)).threads(TokenizeStage.needs)
        == 1
    )
