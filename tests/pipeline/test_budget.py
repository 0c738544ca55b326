"""A run that keeps to its budget (--max-gpu-hours): it projects its cost after warm-up, stops at a
consistent point before spending past the cap (whole files, no _SUCCESS, the lease released, exit 1
with the projection), and a rerun with a higher cap resumes exactly once. Real local Ray, real
weights; the encoders here are CPU encode actors (encoder-hours stand for GPU-hours: no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.planning.budget import Budget, Projection, over, project
from pipeline.runner import run_job


@pytest.mark.unit
def test_the_projection_by_hand():
    budget = Budget(max_hours=1.0, encoders=8, margin=0.1, warmup_s=30)
    # 8 GPUs for 30 min: 4 GPU-hours spent, already past the cap
    assert over(budget, project(budget, elapsed_s=1800, encoding_s=10, records_left=None, records_per_s=0))
    # 8 GPUs for 3 min (0.4 h); 1e6 records left at 1e4/s = 100 s more: 0.4 + 8 x 100/3600 = 0.622 h
    p = project(budget, elapsed_s=180, encoding_s=60, records_left=1e6, records_per_s=1e4)
    assert p.projected_hours == pytest.approx(0.4 + 8 * 100 / 3600) and not over(budget, p)
    # the same with 4e6 left: 0.4 + 8 x 400/3600 = 1.29 h, past 0.9 (the cap less its margin)
    assert over(budget, project(budget, elapsed_s=180, encoding_s=60, records_left=4e6, records_per_s=1e4))
    # before the warm-up nothing is projected
    assert project(budget, elapsed_s=20, encoding_s=5, records_left=4e6, records_per_s=1e4).projected_hours is None
    assert Budget.of(max_gpu_hours=None, max_cost=50.0, gpu_hour_price=4.0, encoders=2, margin=0.1, warmup_s=1,
                     on_gpu=True).max_hours == 12.5  # fmt: skip
    assert "cap 1" in Projection(0.5, 0.7, 10).describe(budget)


@pytest.mark.unit
def test_a_small_cap_stops_early_enough_to_pay_for_the_stop_itself():
    """The overshoot once seen: a 0.003 h cap (10.8 s of one encoder) with the default 30 s warm-up
    never projected, and the spent-only check fired at 9.72 s; the next check, the readers' next
    look and the blocks already read took it to 12.1 s. Now the warm-up is at most a quarter of the
    cap's time, and the stop is asked for once what will be spent by the time it lands passes."""
    budget = Budget(max_hours=0.003, encoders=1, margin=0.1, warmup_s=30, reaction_s=4.0, in_flight_records=64)
    assert budget.warmup == pytest.approx(0.25 * 10.8)
    # 6 s in, 3 s of encoding: 20 records/s, 64 in flight (3.2 s) + 4 s reaction -> 13.2 s at stop > 9.72
    assert over(budget, project(budget, elapsed_s=6.0, encoding_s=3.0, records_left=None, records_per_s=20.0))
    # the same moment without the stop's own cost counted was not over: the overshoot
    bare = Budget(max_hours=0.003, encoders=1, margin=0.1, warmup_s=30, reaction_s=0.0, in_flight_records=0)
    assert not over(bare, project(bare, elapsed_s=6.0, encoding_s=3.0, records_left=None, records_per_s=20.0))
    # a projection after the (capped) warm-up: 64 records left at 20/s end well inside the cap
    ok = project(budget, elapsed_s=3.0, encoding_s=2.8, records_left=20, records_per_s=200.0)
    assert ok.projected_hours is not None and not over(budget, ok)
    # a big cap keeps its configured warm-up
    assert Budget(max_hours=10.0, encoders=8, warmup_s=30).warmup == 30


@pytest.mark.e2e  # a stop and a resume, a minute on 2 cores: with the other kill/resume tests
def test_a_run_past_its_budget_stops_whole_and_a_rerun_resumes_exactly_once(ray_cluster, tmp_path, minilm_path):
    from e5tools.sample_text import passages

    pool = [t for _, t in passages(2400)]  # about 1,100 distinct passages: numbered, 1,200 records
    texts = [f"{pool[n % len(pool)]} ({n})" for n in range(1200)]
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    for s in range(6):
        rows = texts[s * 200 : (s + 1) * 200]
        (corpus / f"s{s}.jsonl").write_text(
            "".join(json.dumps({"id": f"{s}-{i}", "text": t}) + "\n" for i, t in enumerate(rows))
        )

    def config(**kw) -> JobConfig:
        return JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False, rows_per_file=64,
                         rows_per_block=64, status_interval_s=2, **kw)  # fmt: skip

    # ~2 s of an encoder: far less than the corpus needs (tens of seconds here)
    with pytest.raises(
        JobError, match=r"stopped to keep to the budget \(encoder-hours.*projected.*records left"
    ) as caught:
        run_job(config(max_gpu_hours=2 / 3600, budget_warmup_s=2, budget_margin=0.1))
    assert caught.value.exit_code == 1 and not (out / "_SUCCESS").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    stopped = manifest["runs"][-1]
    assert stopped["status"] == "stopped" and stopped["budget"]["cap"] == pytest.approx(2 / 3600)
    todo = stopped["budget"]["records_to_do"]  # the estimate the stop rested on, against the truth: 1,200
    assert todo is None or 0.5 * len(texts) <= todo <= 1.5 * len(texts), todo
    done = [i for f in out.glob("part-*.parquet") for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert len(done) < len(texts)  # stopped before the end...
    assert len(done) == len(set(done))  # ...with whole files

    summary = run_job(config(max_gpu_hours=10.0))  # a higher cap: resumes where it stopped
    assert summary.status == "complete" and summary.rows_skipped == len(done)
    got = [i for f in out.glob("part-*.parquet") for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert sorted(got) == sorted(f"{s}-{i}" for s in range(6) for i in range(200))  # every record exactly once
    assert not Path(out / "_stop").exists()
