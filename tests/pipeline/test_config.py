import re

import pytest

from pipeline.cli import build_parser, job_config_from_args
from pipeline.config import JobConfig
from pipeline.errors import UsageError

pytestmark = pytest.mark.unit


def test_defaults_follow_e5():
    c = JobConfig(inputs=("s3://b/in/",), output="s3://b/out/")
    assert c.model == "intfloat/e5-base-v2"
    assert c.prefix_text == "passage: " and c.max_length == 512


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prefix": "doc"}, "--prefix must be one of passage, query, none"),
        ({"dtype": "fp8"}, "--dtype must be one of"),
        ({"max_length": 0}, "--max-length must be an integer"),
        ({"batch_size": -1}, "--batch-size"),
        ({"max_bad_fraction": 2.0}, "--max-bad-fraction"),
        ({"inputs": ()}, "at least one --input"),
    ],
)
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


def test_scrub_finds_secrets_at_any_depth_and_inside_uris():
    from pipeline.io.storage import normalize_uri, register_secrets, scrub

    options = {
        "anon": False,
        "client_kwargs": {"config": {"credentials": {"value": "DEEP-THREE-LEVELS"}}},
        "connection_string": "AccountKey=AZ-CONN-1234",
        "list": [{"sas_token": "SAS-TOKEN-999"}],
    }
    message = "failed with DEEP-THREE-LEVELS AZ-CONN-1234 SAS-TOKEN-999 at s3://USER:PASSWD-77@bucket/k"
    clean = scrub(message, options)
    for secret in ("DEEP-THREE-LEVELS", "AZ-CONN-1234", "SAS-TOKEN-999", "PASSWD-77"):
        assert secret not in clean
    register_secrets({}, ["s3://USERX:PASSWD-78@bucket/k"])
    assert "PASSWD-78" not in scrub("s3fs says: USERX:PASSWD-78@bucket/k not found")  # no scheme in the message
    assert normalize_uri("s3://USER:PASSWD-77@bucket/k/") == "s3://bucket/k"
    assert normalize_uri("abfs://container@account/x") == "abfs://container@account/x"  # a location, kept


@pytest.mark.parametrize(
    "flag, uri",
    [
        ("inputs", "https://reader:HTTP-PASS-51@files.example/corpus/a.jsonl"),
        ("inputs", "s3://AKIAUSER:S3-PASS-52@bucket/corpus/"),
        (
            "inputs",
            "https://bucket.s3.amazonaws.com/a.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
            "20261130&X-Amz-Signature=PRESIGNED-SIG-53",
        ),
        ("inputs", "https://store.example/a.jsonl?sv=2024&sig=SAS-SIG-54"),
        ("output", "https://u:OUT-PASS-55@dav.example/out/"),
        ("model", "https://m.example/e5/?token=MODEL-TOKEN-56"),
    ],
)
def test_credentials_inside_a_uri_are_refused_before_anything_is_recorded(flag, uri):
    """They would reach the manifest, the data files' `source`, the shard log and the logs."""
    base = {"inputs": ("in/",), "output": "out/", "model": "m"}
    with pytest.raises(UsageError, match="pass them with --storage-options") as refused:
        JobConfig(**{**base, flag: (uri,) if flag == "inputs" else uri})
    assert not any(secret in str(refused.value) for secret in re.findall(r"[A-Z0-9]+-[A-Z]+-\d\d", uri))


def test_uris_that_name_a_location_are_not_credentials():
    for uri in ("abfs://container@account/x/", "s3://bucket/what?.jsonl", "https://files.example/a.jsonl?part=2"):
        assert JobConfig(inputs=(uri,), output="out/", model="m").inputs == (uri,)


def test_storage_options_from_a_file_stay_off_the_command_line(tmp_path):
    from pipeline.config import parse_storage_options

    path = tmp_path / "opts.json"
    path.write_text('{"key": "k", "secret": "s"}')
    assert parse_storage_options(f"@{path}") == {"key": "k", "secret": "s"}
    with pytest.raises(UsageError, match="cannot read --storage-options file"):
        parse_storage_options(f"@{tmp_path}/missing.json")


@pytest.mark.parametrize(
    "field,value",
    [
        ("lease_wait_s", -1),
        ("lease_ttl_s", 0),
        ("lease_ttl_s", float("nan")),
        ("max_record_bytes", 10),
        ("skip_corrupt_remainders", "yes"),
    ],
)
def test_exactly_once_settings_are_validated(field, value):
    with pytest.raises(UsageError, match=field.replace("_", "-")):
        JobConfig(inputs=("in",), output="out", **{field: value})


def test_log_lines_escape_control_characters_in_user_data():
    """An id or path with a line break cannot forge a log line through the CLI's handler."""
    import logging

    from pipeline.io.storage import ScrubFilter, escape_controls

    record = logging.LogRecord("pipeline", logging.WARNING, __file__, 1, "ids: %s", ("a\nERROR forged\x1b[2J",), None)
    ScrubFilter().filter(record)
    assert record.getMessage() == "ids: a\\nERROR forged\\x1b[2J"
    assert escape_controls("tab\tand é stay") == "tab\tand é stay"


def test_building_a_config_registers_nothing_the_entry_point_does():
    from pipeline.io import storage

    config = JobConfig(inputs=("a",), output="b", storage_options={"client_kwargs": {"token": "CTOR-SECRET-51"}})
    assert "CTOR-SECRET-51" not in storage._REGISTERED_SECRETS  # no side effect at construction
    assert "CTOR-SECRET-51" in storage.scrub("CTOR-SECRET-51")
    config.register_secrets()  # what the command line does first
    assert storage.scrub("failed: CTOR-SECRET-51") == "failed: ***"


def test_a_jobs_secrets_are_registered_while_it_runs_and_not_after():
    """run_job holds its secrets for its own length (a notebook or Airflow worker runs many jobs):
    counted, so two jobs at once keep each other's, and gone once the last one ends."""
    from pipeline.io import storage

    one = JobConfig(inputs=("a",), output="b", storage_options={"key": "x", "nested": {"secret": "LIFETIME-SECRET-7"}})
    other = JobConfig(inputs=("a",), output="c", storage_options={"deep": [{"password": "LIFETIME-SECRET-7"}]})
    with one.secrets_registered():
        assert storage.scrub("see LIFETIME-SECRET-7") == "see ***"
        with other.secrets_registered():  # a second job in the same process, sharing the value
            pass
        assert storage.scrub("see LIFETIME-SECRET-7") == "see ***"  # the first one still runs
    assert "LIFETIME-SECRET-7" not in storage._REGISTERED_SECRETS
    assert storage.scrub("see LIFETIME-SECRET-7") == "see LIFETIME-SECRET-7"  # nothing left behind
