"""The run's timeline: each role's busy and idle time from the job's own spans, Ray Data's waits
beside them. Hand-computed cases (the live one: test_telemetry's run and the CPU-side bench)."""

from types import SimpleNamespace

import pytest

from pipeline.backend.progress import WorkSpans
from pipeline.backend.timeline import build, describe, operator_stats

pytestmark = pytest.mark.unit


def _spans(**roles: list[tuple[str, float, float]]) -> dict:
    out = {}
    for role, spans in roles.items():
        acc = WorkSpans()
        for worker, start, end in spans:
            acc.add(worker, start, end)
        out[role] = acc.as_dict()
    return {"roles": out, "progress_calls": 7}


def test_busy_idle_and_the_busiest_stage_by_hand():
    # a 10 s window: one tokenizer busy 9 s of it; two encode actors 3 s each; reads 1 s in two spans
    spans = _spans(
        tokenize=[("n:1", 100.0, 104.0), ("n:1", 104.0, 109.0)],
        encode=[("n:2", 101.0, 104.0), ("n:3", 105.0, 108.0)],
        read=[("n:4", 100.0, 100.5), ("n:4", 100.5, 101.0)],
    )
    timeline = build(spans, [], window_s=10.0, cpus=2.0)
    tokenize, encode, read = (timeline["roles"][k] for k in ("tokenize", "encode", "read"))
    assert tokenize == {
        "busy_s": 9.0,
        "workers": 1,
        "spans": 2,
        "active_s": 9.0,
        "cores_busy": 0.9,
        "busy_share": 0.9,
        "busy_share_active": 1.0,
        "idle_s": 1.0,
    }
    assert encode["workers"] == 2 and encode["busy_share"] == 0.3 and encode["idle_s"] == 14.0  # 2 x 10 - 6
    assert encode["busy_share_active"] == round(6 / (2 * 7), 3)  # active 101 -> 108
    assert read == {"busy_s": 1.0, "workers": 1, "spans": 2, "active_s": 1.0, "cores_busy": 0.1}  # tasks: no idle
    assert timeline["busiest"] == "tokenize"  # reads and writes are not stages that pace
    assert timeline["work_utilization"] == round((9 + 6 + 1) / (2 * 10), 3)
    text = describe(timeline)
    assert "(the stages' and tasks' own work: 80% of them)" in text
    assert "read: 1.0 s busy in 2 spans on 1 worker(s): 0.10 cores on average" in text
    assert "tokenize: 9.0 s busy in 2 spans on 1 worker(s): 90% of their time (100% while active)" in text
    assert "<- busiest stage" in text.splitlines()[[k for k in timeline["roles"]].index("tokenize") + 1]
    assert "progress actor: 7 calls" in text


def test_no_spans_no_roles_and_no_busiest():
    timeline = build({}, [], window_s=3.0, cpus=4.0)
    assert timeline["roles"] == {} and timeline["busiest"] is None and timeline["progress_calls"] == 0


def _op(name: str, start: float, end: float, task_s: float) -> SimpleNamespace:
    return SimpleNamespace(
        operator_name=name,
        earliest_start_time=start,
        latest_end_time=end,
        wall_time=SimpleNamespace(sum=task_s),
        cpu_time=SimpleNamespace(sum=task_s / 2),
    )


def test_ray_data_operators_in_pipeline_order_with_their_waits():
    read = SimpleNamespace(
        operators_stats=[_op("ReadShards", 0.0, 4.0, 2.0)],
        extra_metrics={"task_scheduling_time_s": 1.25, "task_submission_backpressure_time": 3, "num_tasks_finished": 8},
        parents=[],
    )
    write = SimpleNamespace(
        operators_stats=[_op("Write", 2.0, 9.5, 1.0)],
        extra_metrics={"task_output_backpressure_time": 0.5, "function_body_time_s": "n/a"},
        parents=[read],
    )
    ops = operator_stats(SimpleNamespace(_write_ds=SimpleNamespace(_get_stats_summary=lambda: write)))
    assert [o["operator"] for o in ops] == ["ReadShards", "Write"]
    assert ops[0] | {} == {
        "operator": "ReadShards",
        "span_s": 4.0,
        "task_s": 2.0,
        "task_cpu_s": 1.0,
        "scheduling_wait_s": 1.25,
        "submission_backpressure_s": 3.0,
        "output_backpressure_s": None,
        "udf_s": None,
        "tasks": 8,
    }
    assert ops[1]["span_s"] == 7.5 and ops[1]["output_backpressure_s"] == 0.5 and ops[1]["udf_s"] is None
    line = describe(build({}, ops, window_s=10.0, cpus=2.0))
    assert "[Ray Data] ReadShards: 8 tasks, 2.0 s in tasks over 4.0 s; waited: scheduling_wait_s 1.2 s" in line


def test_a_ray_without_the_stats_gives_none_and_says_so(caplog):
    with caplog.at_level("INFO", logger="pipeline.backend.timeline"):
        assert operator_stats(SimpleNamespace()) == []  # no _write_ds: an older or newer Ray Data
    assert "Ray Data's operator stats are not available here" in caplog.text


def test_only_a_process_first_run_counts_its_launch(monkeypatch):
    """A second run in one process (a notebook, a test session, verify after run) did not launch the
    process: its start-up must not carry the process's age as 'launch_and_imports'."""
    from pipeline.backend import timeline

    monkeypatch.setattr(timeline.Phases, "_launch_counted", False)
    monkeypatch.setattr(timeline, "process_started_at", lambda: 1000.0)  # launched at a fixed moment
    first, second = timeline.Phases(), timeline.Phases()
    assert first.values["launched_before_s"] == round(first.t0_wall - 1000.0, 3)
    assert "launched_before_s" not in second.values
    second.at("embed_started_at", second.t0_wall + 1.0)
    second.at("first_encode_batch_at", second.t0_wall + 3.0)
    assert timeline.startup(second.values)["launch_and_imports"] == 0.0
