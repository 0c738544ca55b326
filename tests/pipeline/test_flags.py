"""The one flag table: docs, defaults, parsers and the environment agree with it."""

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from pipeline import flags
from pipeline.cli import build_parser, job_config_from_args
from pipeline.config import JobConfig
from pipeline.errors import UsageError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_docs_flag_table_is_generated_from_the_table():
    text = (ROOT / "docs" / "flags.md").read_text()
    assert text.endswith(flags.markdown_table()), "regenerate docs/flags.md from pipeline.flags.markdown_table()"


def test_every_run_flag_is_a_job_config_field_with_the_same_default():
    by_name = {f.name: f for f in fields(JobConfig)}
    for flag in flags.FLAGS:
        if "run" not in flag.commands:
            continue
        field = by_name[flag.field]
        default = None if field.default is MISSING else field.default
        assert default == flag.default, flag.name
    run_fields = {f.field for f in flags.FLAGS if "run" in f.commands}
    assert run_fields == set(by_name)


def test_precedence_flag_over_environment_over_job_file(tmp_path, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text("input: s3://b/from-file/\noutput: s3://b/out/\nmax-length: 128\nrows_per_file: 100\n")
    monkeypatch.setenv("E5_EMBED_MAX_LENGTH", "256")
    monkeypatch.setenv("E5_EMBED_OVERWRITE", "true")
    monkeypatch.setenv("E5_EMBED_INPUTS", '["s3://b/env-1/", "s3://b/env-2/"]')
    args = build_parser().parse_args(["run", "--config", str(job), "--rows-per-file", "7"])
    config = job_config_from_args(args)
    assert config.inputs == ("s3://b/env-1/", "s3://b/env-2/")  # env over file
    assert config.max_length == 256 and config.overwrite is True  # env over file, env over default
    assert config.rows_per_file == 7  # flag over file
    args = build_parser().parse_args(["run", "--config", str(job), "--max-length", "64"])
    assert job_config_from_args(args).max_length == 64  # flag over env


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("E5_EMBED_MAX_LENGTH", "lots", "E5_EMBED_MAX_LENGTH"),
        ("E5_EMBED_OVERWRITE", "maybe", "expected true or false"),
        ("E5_EMBED_MAX_LENGTH", "4", "--max-length must be an integer"),
    ],
)
def test_bad_environment_values_are_usage_errors(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["run", "--input", "s3://b/i/", "--output", "s3://b/o/"])
    with pytest.raises(UsageError, match=message):
        job_config_from_args(args)


def test_plan_runs_the_same_checks():
    from pipeline.cli import main

    assert main(["plan", "--gpus", "1", "--accelerator", "T4", "--max-length", "4"]) == 2


def test_each_setting_is_declared_once_and_everything_else_is_derived():
    """A setting's help, type, default, check and commands are written once, on its field; the flag
    table, the env names and the docs come from the fields (no second table to keep equal)."""
    import ast

    from pipeline.config import PlanConfig, PlanOptions
    from pipeline.settings import flags_of

    assert flags.FLAGS == flags_of(JobConfig) + flags_of(PlanOptions)
    assert all("flag" in f.metadata for f in fields(JobConfig) + fields(PlanOptions))  # every field is a setting
    declared = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Flag", "setting", "_FlagSpec"):
                declared.append(f"{path.relative_to(ROOT)}:{node.func.id}")
    assert {d.split(":")[0] for d in declared if d.endswith(":setting")} == {"pipeline/config.py"}  # declared there
    machinery = sorted(d for d in declared if not d.endswith(":setting"))
    assert machinery == ["pipeline/settings.py:Flag", "pipeline/settings.py:_FlagSpec"]  # built from fields only
    # plan's typed config is generated from the same declarations: the run settings plan takes, and its own
    plan_fields = {f.name for f in fields(PlanConfig)}
    assert plan_fields == {f.field for f in flags.FLAGS if "plan" in f.commands}
    assert {flags.env_name(f) for f in flags.FLAGS if "run" in f.commands} == {
        flags.ENV_PREFIX + f.name.upper() for f in fields(JobConfig)
    }
