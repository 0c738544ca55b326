"""The output layout, chosen once: what each choice supplies, and that it is recognised the same
way from a job's settings, an output's metadata and the encoder's rows."""

import pytest

from pipeline.config import JobConfig, field_spec
from pipeline.io import schemas, text_hash
from pipeline.io.layout import CHUNK, TRUNCATE, Layout

pytestmark = pytest.mark.unit


def test_each_layout_supplies_its_schemas_keys_and_spans():
    assert TRUNCATE.output_schema(8) == schemas.output_schema(8)
    assert CHUNK.output_schema(8, "float16") == schemas.chunk_output_schema(8, "float16")
    assert CHUNK.embedded_schema(8) == schemas.chunk_embedded_schema(8)
    assert (TRUNCATE.record_key, CHUNK.record_key) == (("source", "row"), ("source", "row", "chunk"))
    assert (TRUNCATE.first_row, CHUNK.first_row) == (None, ("chunk", 0))
    assert (TRUNCATE.span_columns, CHUNK.span_columns) == ((), ("char_start", "char_end"))
    assert set(CHUNK.record_key) | set(CHUNK.span_columns) <= set(CHUNK.output_schema(8).names)
    assert (TRUNCATE.text_hash_scheme, CHUNK.text_hash_scheme) == (text_hash.SCHEME, text_hash.CHUNKED_SCHEME)


def test_the_layout_is_the_same_from_the_job_the_metadata_and_the_rows():
    for chunk_tokens, layout in ((None, TRUNCATE), (128, CHUNK)):
        job = JobConfig(inputs=("in",), output="out", chunk_tokens=chunk_tokens)
        assert job.layout is layout
        assert field_spec(job).title_apart is layout.title_apart
        made = job.output_settings().metadata(_info(), "sha")
        assert Layout.of_metadata(made) is layout
        assert Layout.of_rows(layout.embedded_schema(8).names) is layout
        assert made["text_hash"] == layout.text_hash_scheme


def _info():
    from pipeline.stages.model import offline_info

    return offline_info("intfloat/e5-base-v2")
