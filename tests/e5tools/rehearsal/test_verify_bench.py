"""The verify benchmark's coverage pass runs over a synthetic output of the job's own files (no
speed is asserted: the numbers are docs/benchmarks.md's)."""

from __future__ import annotations

import pytest

from e5tools.rehearsal.verify_bench import coverage_cost

pytestmark = pytest.mark.rehearsal


def test_the_coverage_pass_over_a_synthetic_output_holds_and_reports_its_cost():
    result = coverage_cost(20)
    assert result["files"] == 20 and result["rows"] == 160 and result["seconds"] > 0
