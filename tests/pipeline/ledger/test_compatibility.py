"""The output format's version and its one compatibility table: what a current output records,
how an output made before a fact was recorded is read or refused."""

import pytest

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.io import schemas
from pipeline.ledger import compatibility
from pipeline.stages.model import offline_info

pytestmark = pytest.mark.unit


def _made(**settings):
    job = JobConfig(inputs=("a", "b"), output="out", **settings)
    return job.output_settings().metadata(offline_info("intfloat/e5-base-v2"), "sha256:x") | {
        "compute_dtype": "float32"
    }


def test_a_current_output_records_its_version_and_every_fact_of_the_table():
    made = _made()
    assert compatibility.version(made) == schemas.FORMAT_VERSION == compatibility.FORMAT_VERSION
    assert {f.key for f in compatibility.FACTS} <= set(made)
    assert not any(compatibility.lacks(made, f.key) for f in compatibility.FACTS)


def test_an_output_made_before_a_fact_is_read_or_refused_as_the_table_says():
    old = {k: v for k, v in _made().items() if k not in ("format_version", "input_format", "model_sha")}
    assert compatibility.version(old) == 0 and compatibility.lacks(old, "input_format")
    assert compatibility.matches_any(old, "input_format")  # resumed without it
    assert not compatibility.matches_any(_made(), "input_format")  # a current output's format counts
    with pytest.raises(UsageError, match=r"o was made before this job recorded model digests: .*--overwrite"):
        compatibility.refuse_lacking(old, "model_sha", "o was made")
    compatibility.refuse_lacking(old, "text_hash", "o was made")  # it has one: nothing to refuse
    with pytest.raises(UsageError, match="before rows carried a text_hash.*leave it out"):
        compatibility.refuse_lacking({k: v for k, v in old.items() if k != "text_hash"}, "text_hash", "o was made")
    assert compatibility.version({"format_version": True}) == 0  # only an integer is a version


def test_every_fact_says_how_an_output_without_it_is_read():
    for fact, lacking, how in compatibility.describe():
        assert lacking and how.startswith(("refused for", "read as")), fact


def test_the_docs_table_is_the_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "exactly-once.md").read_text()
    section = doc.split("### Compatibility", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == compatibility.markdown_rows()
    assert f"(now\n{compatibility.FORMAT_VERSION})" in section or f"(now {compatibility.FORMAT_VERSION})" in section
