"""``plan --input``: the corpus estimate from a bounded sample, against corpora of known size."""

import gzip
import json

import pytest

from pipeline.io.listing import list_shards
from pipeline.io.records import FieldSpec
from pipeline.planning.estimate import add_cost, estimate_corpus, pick_spread
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.model import ModelSource
from tests.clirun import run_cli

pytestmark = pytest.mark.unit


def write_corpus(folder, shards=30, per_shard=2000, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        lines = "".join(
            json.dumps({"id": f"{s}-{i}", "text": f"record {i} of shard {s} " + "word " * (i % 50)}) + "\n"
            for i in range(per_shard)
        ).encode()
        if compress:
            (folder / f"s{s:03d}.jsonl.gz").write_bytes(gzip.compress(lines))
        else:
            (folder / f"s{s:03d}.jsonl").write_bytes(lines)
    return shards * per_shard


def estimate(shards, model, **kw):
    return estimate_corpus(
        shards,
        storage_options={},
        fields=FieldSpec(),
        model=ModelSource(name_or_path=model),
        prefix="passage: ",
        max_length=32,
        sample_shards=4,
        sample_records=400,
        **kw,
    )


@pytest.mark.parametrize("compress", [True, False])
def test_records_and_tokens_are_estimated_from_a_small_sample(tmp_path, minilm_path, compress):
    total = write_corpus(tmp_path / "c", compress=compress)
    shards = list_shards([str(tmp_path / "c")], {})
    est = estimate(shards, minilm_path)
    assert est.sampled_shards == 4 and est.sampled_records == 400  # bounded: 100 kept per sampled shard
    assert abs(est.records - total) / total < 0.1, est.records
    assert 0.3 < est.truncated_share < 0.9  # texts of 6 to 55 words against 32 tokens
    assert est.tokens_embedded <= est.records * 32 * 1.01
    chunked = estimate(shards, minilm_path, chunk=ChunkSettings(tokens=32, overlap=4))
    assert chunked.windows_per_record > 1.2 and chunked.tokens_embedded > est.tokens_embedded
    from pipeline.planning.calibration import profile_rate

    priced = add_cost(est, encoders=4, rate=profile_rate(1000.0), gpu_hour_price=2.0)
    assert priced.gpu_hours == pytest.approx(est.tokens_embedded / 1000 / 3600)
    assert priced.wall_hours == pytest.approx(priced.gpu_hours / 4) and priced.cost == pytest.approx(
        2 * priced.gpu_hours
    )


def test_the_sample_is_spread_over_the_listing():
    assert pick_spread(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert pick_spread([1, 2], 5) == [1, 2]


def test_plan_input_prints_the_estimate_with_cost(tmp_path, minilm_path):
    write_corpus(tmp_path / "c", shards=6, per_shard=300)
    args = ["--input", str(tmp_path / "c"), "--model", minilm_path, "--gpus", "8", "--accelerator", "H100"]
    result = run_cli("plan", *args, "--gpu-hour-price", "3", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    est = json.loads(result.stdout)["estimate"]
    assert est["records"] == pytest.approx(1800, rel=0.1) and est["gpu_hours"] > 0 and est["cost"] > 0
    text = run_cli("plan", *args).stdout
    assert "records" in text and "GPU-hours" in text and "tokens to embed" in text
