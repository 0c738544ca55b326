"""Operators see the run: a periodic status line with an ETA, and per-stage reports."""

import json
import logging
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backend.metrics import METRICS
from pipeline.backend.status import status_line
from pipeline.config import JobConfig
from pipeline.runner import run_job


@pytest.mark.unit
def test_status_line_counts_work_where_it_happens_with_the_encode_rate_and_an_eta():
    values = {
        "read_rows": 500,
        "read_bytes": 250,
        "tokenized": 450,
        "encoded": 400,
        "encoded_tokens": 12_000,
        "embedded": 0,
        "rejected": 0,
    }
    recent = {"encoded": 5.0, "encoded_tokens": 150.0}  # the encode stage's rate over the last minute
    line = status_line(values, total_bytes=1000, total_records=None, elapsed_s=60, recent=recent)
    # nothing committed yet (one file, written at the end), yet the encoder's work shows; 25% of the
    # bytes held 500 records: ~2,000 in all, 1,600 left to encode at 5 records/s
    assert line == (
        "progress: 450 tokenized, 400 encoded, 0 committed (0 embedded, 0 rejected) records, 500 read "
        "(25% of input bytes), 150 tokens/s encoding, ETA 5m20s"
    )
    # an exact record total (Parquet footers): the records this run has left, less what earlier runs wrote
    values |= {"embedded": 300, "rejected": 3}
    line = status_line(values, total_bytes=1000, total_records=2500, records_done=500, elapsed_s=60, recent=recent)
    assert line == (
        "progress: 450 tokenized, 400 encoded, 303 committed (300 embedded, 3 rejected) of 2,000 records, "
        "500 read (20% of input records), 150 tokens/s encoding, ETA 5m20s"
    )
    # everything read and encoded: the ETA says what it waits for (not while records are still encoding)
    done = values | {"read_bytes": 1000, "read_rows": 2000, "tokenized": 2000, "encoded": 1990}
    assert "ETA 2s" in status_line(done, total_bytes=1000, total_records=None, elapsed_s=60, recent=recent)
    done["encoded"] = 2000
    assert status_line(done, total_bytes=1000, total_records=None, elapsed_s=60, recent=recent).endswith(
        "ETA encoding done; writing the last files (1,697 records to commit)"
    )
    assert "ETA unknown" in status_line({}, total_bytes=1000, total_records=None, elapsed_s=5)
    # no window given: the whole run's encode rate
    assert "200 tokens/s" in status_line(values, total_bytes=1000, total_records=None, elapsed_s=60)


@pytest.mark.unit
def test_metric_names_are_prometheus_names():
    assert all(name.startswith("e5_embed_") and name.isidentifier() for name in METRICS)


PROGRESS = re.compile(
    r"progress: ([\d,]+) tokenized, ([\d,]+) encoded, ([\d,]+) committed .* ([\d,]+) tokens/s encoding"
    r"(?: \(encoder device busy \d+%\))?, ETA (.*)"
)


def _counts(line: str) -> tuple[int, int, int, int, str]:
    match = PROGRESS.match(line)
    assert match, line
    *numbers, eta = match.groups()
    return (*(int(n.replace(",", "")) for n in numbers), eta)


@pytest.mark.integration
@pytest.mark.parametrize("fmt, rows_per_file", [("jsonl", 16), ("parquet", None)])
def test_a_run_logs_status_lines(ray_cluster, tmp_path, minilm_path, caplog, fmt, rows_per_file):
    """Several files (jsonl, 16 rows a file): commits trail encoding. One file (parquet, the default
    --rows-per-file): encoded records and tokens/s move while nothing is committed yet."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for s in range(3):
        rows = [{"id": f"{s}-{i}", "text": f"status line test {i} " * 20} for i in range(40)]
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), corpus / f"s{s}.parquet", row_group_size=7)
        else:
            (corpus / f"s{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO, logger="pipeline.backend.status"):
        summary = run_job(
            JobConfig(
                inputs=(str(corpus),),
                output=str(tmp_path / "out"),
                model=minilm_path,
                progress=False,
                rows_per_block=8,
                batch_size=4,
                status_interval_s=0.02,  # one file: encode (one call) to commit is ~0.1 s, one or two lines
                **({"rows_per_file": rows_per_file} if rows_per_file else {}),
            )
        )
    assert summary.rows_embedded == 120
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    counts = [_counts(line) for line in lines]
    assert all(t >= e >= c for t, e, c, _, _ in counts), lines  # work flows tokenize -> encode -> commit
    assert all("writing the last files" not in eta for _, e, _, _, eta in counts if e < 120), lines
    if rows_per_file:  # several files: some line shows commits trailing the encoder
        assert any(0 < c < e for _, e, c, _, _ in counts), lines
    else:  # one file: encoding shows (records and tokens/s) before the file is written
        assert any(e > 0 and c == 0 and rate > 0 for _, e, c, rate, _ in counts), lines
        assert any(" of 120 records" in line and "of input records" in line for line in lines), lines
    # once something is encoded the line says how busy the encoders' device was (their own clocks)
    assert all("encoder device busy" in line for line, (_, e, _, _, _) in zip(lines, counts) if e > 0), lines
    run = json.loads((tmp_path / "out" / "_manifest.json").read_text())["runs"][-1]
    phases = run["phases"]
    steps = (
        "model",
        "list_inputs",
        "lease",
        "prepare_output",
        "ray_start",
        "plan",
        "embed",
        "reconcile",
        "duplicate_ids",
    )
    assert all(phases[k] >= 0 for k in steps)
    assert 0 < phases["first_tokenize_batch_at"] <= phases["first_encode_batch_at"] < summary.wall_s
    assert phases["embed_started_at"] < phases["first_tokenize_batch_at"]
    assert phases.get("launched_before_s", 0) >= 0  # only the process's first run counts its launch
    encoder = run["timeline"]["encoder"]  # every run's record: where the encoders' time went
    assert encoder["attention"] == "padded" and encoder["micro_batches"] >= 120 / 4
    assert 0 < encoder["device_busy_share"] <= 1 and 0 <= encoder["padding_share"] < 1


@pytest.mark.unit
def test_the_budget_projection_is_in_the_metrics_and_stops_the_run_once(monkeypatch):
    """GPU-hours spent and projected reach Prometheus as gauges on every check; past the cap the
    run is asked to stop, once. Hand-computed: 4 encoders held for 30 min = 2.0 hours spent; 90
    records left at 1 record/s on 4 encoders = 0.1 hours more."""
    import time

    from pipeline.backend import metrics
    from pipeline.backend.progress import Telemetry
    from pipeline.backend.status import RunMonitor
    from pipeline.planning.budget import Budget

    gauges: dict[str, float] = {}
    monkeypatch.setattr(metrics, "set_gauge", lambda name, value, run_id, **tags: gauges.__setitem__(name, value))
    stops: list[str] = []
    reporter = RunMonitor(
        Telemetry(run_id="r1"),
        total_bytes=100,
        budget=Budget(max_hours=2.5, encoders=4, margin=0.1, warmup_s=0),
        on_over=stops.append,
    )
    now = time.monotonic()
    reporter._t0 = now - 1800
    values = {"encoded": 10, "read_rows": 50, "read_bytes": 50}  # half the bytes held 50 records: 100 in all
    line = reporter._check_budget(values, now, {"encoded": 1.0})
    assert gauges == {
        "e5_embed_budget_cap_hours": 2.5,
        "e5_embed_budget_spent_hours": pytest.approx(2.0),
        "e5_embed_budget_projected_hours": pytest.approx(2.1),
    }
    assert "2 spent, 2.1 projected, cap 2.5" in line and stops == []  # 2.1 < 2.5 x 0.9
    reporter._t0 = now - 2000  # 2.22 spent + 0.1: past the 2.25 the margin allows
    reporter._check_budget(values, now, {"encoded": 1.0})
    reporter._check_budget(values, now, {"encoded": 1.0})
    assert len(stops) == 1 and "90 records left" in stops[0]
