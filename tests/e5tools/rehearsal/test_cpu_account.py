"""The whole-job CPU account: roles that add up to the machine's total, marginal figures between two
runs, process labels. Pure arithmetic over recorded runs (the runs themselves: test_scale)."""

import time

import pytest

from e5tools.rehearsal.cpu_account import JOB_ROLES, machine_busy_s, markdown, process_label, role_of, summarize

pytestmark = pytest.mark.unit


def _run(tokens: int, roles: dict[str, float], raw: float, wall_s: float = 10.0) -> dict:
    job = sum(roles.values())
    return {
        "records": tokens // 40,
        "tokens": tokens,
        "wall_s": wall_s,
        "cores": 2,
        "utilization": round(job / (2 * wall_s), 3),
        "cpu_s_by_role": roles,
        "job_cpu_s": job,
        "accounted": 0.97,
        "job_tokens_per_cpu_s": tokens / job,
        "raw_tokenizer": {"tokens": tokens, "tokens_per_s": raw * 2, "tokens_per_cpu_s": raw},
    }


SMALL = {"encode": 5.0, "tokenize": 5.0, "io": 1.5, "driver": 2.0, "runtime": 5.0, "unattributed": 1.0}
LARGE = {"encode": 11.0, "tokenize": 20.0, "io": 4.5, "driver": 3.0, "runtime": 7.0, "unattributed": 1.5}


def test_marginal_roles_add_up_to_the_whole_job_and_the_baseline_is_the_fastest_raw_run():
    report = summarize([_run(3_000_000, SMALL, 600_000.0), _run(12_000_000, LARGE, 700_000.0)], 550_000.0, (1, 4))
    d_tokens, d_job = 9_000_000, sum(LARGE.values()) - sum(SMALL.values())  # 27.5 CPU-s
    assert report["marginal_job_tokens_per_cpu_s"] == round(d_tokens / d_job, 1)
    per_m = report["marginal_cpu_s_per_m_tokens"]
    assert set(per_m) == set(JOB_ROLES)
    assert sum(per_m.values()) == pytest.approx(report["marginal_job_cpu_s_per_m_tokens"], abs=0.01)
    assert per_m["tokenize"] == pytest.approx(15.0 / 9.0, abs=1e-3)
    assert report["raw_tokenizer_tokens_per_cpu_s"] == 700_000.0  # the strictest baseline
    assert report["marginal_ratio"] == round(d_tokens / d_job / 700_000.0, 3)
    assert report["marginal_ratio_range"][1] == round(d_tokens / d_job / 600_000.0, 3)
    text = markdown(report)
    assert f"**{report['marginal_ratio']}x**" in text and "unattributed 0.056" in text


def test_wall_time_marginal_throughput_and_utilization_by_hand():
    # 9M more tokens in 20 s more wall time on 2 cores; the raw tokenizer's wall rate (every core) 1.4M/s
    report = summarize(
        [_run(3_000_000, SMALL, 600_000.0, wall_s=10.0), _run(12_000_000, LARGE, 700_000.0, wall_s=30.0)],
        550_000.0,
        (1, 4),
    )
    assert report["marginal_tokens_per_wall_s"] == 450_000.0
    assert report["raw_tokenizer_tokens_per_wall_s"] == 1_400_000.0  # the faster run's
    assert report["marginal_wall_ratio"] == round(450_000 / 1_400_000, 3)
    assert report["marginal_utilization"] == round(27.5 / (2 * 20.0), 3)  # 27.5 CPU-s more over 2 x 20 s
    text = markdown(report)
    assert "**0.321x**" in text and "**69%**" in text


def test_a_breakdown_that_explains_little_of_the_machine_says_so():
    thin = _run(12_000_000, LARGE, 700_000.0)
    thin["accounted"] = 0.6  # e.g. another program ran beside the job
    text = markdown(summarize([_run(3_000_000, SMALL, 600_000.0), thin], 550_000.0, (1, 4)))
    assert "explain only 60%" in text
    assert "explain only" not in markdown(
        summarize([_run(3_000_000, SMALL, 6e5), _run(12_000_000, LARGE, 7e5)], 5e5, (1, 4))
    )


def test_runs_whose_cpu_did_not_grow_are_unmeasurable_not_a_crash():
    report = summarize([_run(3_000_000, LARGE, 600_000.0), _run(3_100_000, SMALL, 600_000.0)], 550_000.0, (1, 2))
    assert report["marginal_ratio"] is None and report["marginal_cpu_s_per_m_tokens"] is None
    assert "not measurable" in markdown(report)


def test_roles_and_labels_from_ray_process_titles():
    worker = "/venv/bin/python /venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py --x"
    assert role_of({worker, "ray::IDLE", "ray::MapWorker(MapBatches(EncodeStage))"}) == "encode"
    assert role_of({worker, "ray::MapWorker(MapBatches(ChunkTokenizeStage)).submit"}) == "tokenize"
    assert role_of({worker, "ray::IDLE", "ray::ReadReadShards->SplitBlocks(2)", "ray::Write"}) == "io"
    assert role_of({"/venv/bin/python -m pipeline run --input x"}) == "driver"
    assert role_of({worker, "ray::IDLE"}) == "runtime"
    assert process_label({worker, "ray::IDLE", "ray::_StatsActor.register_dataset"}) == "ray::_StatsActor"
    assert process_label({worker, "ray::IDLE"}) == "ray::IDLE"
    assert process_label({"/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --a=b"}) == "raylet"
    assert process_label({"/venv/bin/python -u /venv/lib/ray/_private/log_monitor.py --x"}) == "log_monitor.py"


def test_the_machine_count_sees_this_process_burning_cpu():
    busy, own = machine_busy_s(), time.process_time()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    busy, own = machine_busy_s() - busy, time.process_time() - own
    assert own > 0.1 and busy >= 0.8 * own  # every process of the machine: this one's CPU at least
