import pytest

from pipeline.cli import build_parser, job_config_from_args
from pipeline.config import JobConfig
from pipeline.errors import UsageError


def test_defaults_follow_e5():
    c = JobConfig(inputs=("s3://b/in/",), output="s3://b/out/")
    assert c.model == "intfloat/e5-base-v2"
    assert c.prefix_text == "passage: " and c.max_length == 512


@pytest.mark.parametrize("bad, message", [
    ({"prefix": "doc"}, "--prefix must be one of passage, query, none"),
    ({"dtype": "fp8"}, "--dtype must be one of"),
    ({"max_length": 0}, "--max-length must be an integer"),
    ({"batch_size": -1}, "--batch-size"),
    ({"max_bad_fraction": 2.0}, "--max-bad-fraction"),
    ({"inputs": ()}, "at least one --input"),
])
def test_invalid_values_are_usage_errors(bad, message):
    values = {"inputs": ("x",), "output": "y", **bad}
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        JobConfig(**values)


def test_unknown_key_lists_valid_options():
    with pytest.raises(UsageError) as e:
        JobConfig.from_mapping({"input": ["a"], "output": "b", "batchsize": 3})
    assert "unknown option 'batchsize'" in str(e.value) and "batch-size" in str(e.value)


def test_yaml_keys_mirror_flags_and_flags_win(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("input: s3://b/in/\noutput: s3://b/out/\nbatch-size: 64\nprefix: query\nmax_length: 256\n")
    args = build_parser().parse_args(["run", "--config", str(job), "--batch-size", "8"])
    c = job_config_from_args(args)
    assert c.inputs == ("s3://b/in/",) and c.batch_size == 8 and c.prefix == "query" and c.max_length == 256


def test_storage_options_must_be_json_object():
    args = build_parser().parse_args(["run", "--input", "a", "--output", "b", "--storage-options", "{nope"])
    with pytest.raises(UsageError, match="not valid JSON"):
        job_config_from_args(args)


def test_compile_must_be_a_boolean():
    assert JobConfig(inputs=("a",), output="b", compile=True).compile is True
    with pytest.raises(UsageError, match="--compile must be true or false"):
        JobConfig.from_mapping({"input": ["a"], "output": "b", "compile": "yes"})
