"""Operators see the run: a periodic status line with an ETA, and per-stage reports."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backend.telemetry import METRICS, status_line
from pipeline.config import JobConfig
from pipeline.runner import run_job


@pytest.mark.unit
def test_status_line_has_totals_rates_and_an_eta():
    values = {"read_rows": 500, "read_bytes": 250, "embedded": 400, "rejected": 3, "tokens": 12_000}
    line = status_line(values, total_bytes=1000, total_records=None, elapsed_s=60)
    assert line == (
        "progress: 400 records embedded, 3 rejected, 500 read (25% of input bytes), 200 tokens/s, ETA 3m00s"
    )
    # an exact record total (Parquet footers): share and ETA by records, embedded against what is left
    line = status_line(values, total_bytes=1000, total_records=2500, records_done=500, elapsed_s=60)
    assert line == (
        "progress: 400 embedded and 3 rejected of 2,000 records, 500 read (20% of input records), 200 tokens/s, "
        "ETA 4m00s"
    )
    assert "ETA unknown" in status_line({}, total_bytes=1000, total_records=None, elapsed_s=5)
    assert "ETA 2h30m" in status_line({"read_bytes": 1}, total_bytes=10, total_records=None, elapsed_s=1000)


@pytest.mark.unit
def test_metric_names_are_prometheus_names():
    assert all(name.startswith("e5_embed_") and name.isidentifier() for name in METRICS)


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_run_logs_status_lines(ray_cluster, tmp_path, minilm_path, caplog, fmt):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for s in range(3):
        rows = [{"id": f"{s}-{i}", "text": f"status line test {i} " * 20} for i in range(40)]
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), corpus / f"s{s}.parquet", row_group_size=7)
        else:
            (corpus / f"s{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO, logger="pipeline.backend.telemetry"):
        summary = run_job(
            JobConfig(
                inputs=(str(corpus),),
                output=str(tmp_path / "out"),
                model=minilm_path,
                progress=False,
                rows_per_block=8,
                rows_per_file=16,
                batch_size=8,
                status_interval_s=0.5,
            )
        )
    assert summary.rows_embedded == 120
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines, "no status line was logged"
    assert any("embedded" in line and "ETA" in line for line in lines)
    if fmt == "parquet":  # the footers' exact total, once counted (a line or two may come before it)
        assert any(" rejected of 120 records" in line and "of input records" in line for line in lines), lines
    else:  # no record total without reading: progress in input bytes
        assert all("records embedded" in line and "of input bytes" in line for line in lines)
    phases = json.loads((tmp_path / "out" / "_manifest.json").read_text())["runs"][-1]["phases"]
    steps = ("model", "list_inputs", "lease", "prepare_output", "plan", "embed", "reconcile", "duplicate_ids")
    assert all(phases[k] >= 0 for k in steps)
    assert 0 < phases["first_tokenize_batch_at"] <= phases["first_encode_batch_at"] < summary.wall_s
