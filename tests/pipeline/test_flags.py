"""The one flag table: docs, defaults, parsers and the environment agree with it."""

from dataclasses import fields
from pathlib import Path

import pytest

from pipeline import flags
from pipeline.cli import build_parser, job_config_from_args
from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.options import job_fields

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_docs_flag_table_is_generated_from_the_table():
    text = (ROOT / "docs" / "flags.md").read_text()
    assert text.endswith(flags.markdown_table()), "regenerate docs/flags.md from pipeline.flags.markdown_table()"


# Defaults as the model card and README state them, written out by hand (not derived from the code
# under test): E5's 512 tokens and "passage: " prefix, the documented output and ledger defaults.
DOCUMENTED_DEFAULTS = {
    "prefix": "passage",
    "max_length": 512,
    "dtype": "auto",
    "output_dtype": "float32",
    "rows_per_file": 32768,
    "max_bad_fraction": 0.001,
    "lease_ttl_s": 120.0,
    "budget_margin": 0.1,
    "status_interval_s": 60.0,
    "overwrite": False,
}


def test_the_documented_defaults_hold_in_the_config_the_parsers_and_the_docs():
    """Three consumers of the one declaration against values written down independently: a bare
    JobConfig, `plan`'s parser (which applies defaults) and docs/flags.md."""
    config = JobConfig(inputs=("s3://b/i/",), output="s3://b/o/")
    plan_args = vars(build_parser().parse_args(["plan", "--input", "s3://b/i/"]))
    docs = (ROOT / "docs" / "flags.md").read_text()
    for field_name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(config, field_name) == value, field_name
        if field_name in plan_args:
            assert plan_args[field_name] == value, field_name
        if not isinstance(value, bool):
            flag = "--" + field_name.replace("_", "-")
            row = next(line for line in docs.splitlines() if line.startswith(f"| `{flag}` "))
            assert f"`{value}`" in row, row


def test_run_takes_every_job_config_field_and_nothing_else():
    """Each JobConfig field is reachable from `run` (flag, variable, job-file key), once."""
    run_fields = [f.field for f in flags.FLAGS if "run" in f.commands]
    assert len(run_fields) == len(set(run_fields))
    assert set(run_fields) == {f.name for f in job_fields()}
    parser_dests = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions}
    assert set(run_fields) <= parser_dests


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

    from pipeline.config import PlanConfig
    from pipeline.options import GROUPS, PlanOptions

    names = [f.name for f in flags.FLAGS]
    assert len(names) == len(set(names)), "a flag is declared twice"
    # every setting of every group, once: a field of two groups would be two declarations
    group_fields = [f.name for cls in GROUPS.values() for f in fields(cls)]
    assert len(group_fields) == len(set(group_fields)) == len(JobConfig.field_names())
    assert all("flag" in f.metadata for f in job_fields() + fields(PlanOptions))  # every field is a setting
    declared = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Flag", "setting", "_FlagSpec"):
                declared.append(f"{path.relative_to(ROOT)}:{node.func.id}")
    assert {d.split(":")[0] for d in declared if d.endswith(":setting")} == {"pipeline/options.py"}  # declared there
    machinery = sorted(d for d in declared if not d.endswith(":setting"))
    assert machinery == ["pipeline/settings.py:Flag", "pipeline/settings.py:_FlagSpec"]  # built from fields only
    # plan's typed config composes the same groups: the run settings plan takes, and its own
    plan_taken = {
        f.name for g in PlanConfig.GROUPS.values() for f in fields(g) if "plan" in f.metadata["flag"].commands
    }
    assert plan_taken == {f.field for f in flags.FLAGS if "plan" in f.commands}
    assert {flags.env_name(f) for f in flags.FLAGS if "run" in f.commands} == {
        flags.ENV_PREFIX + f.name.upper() for f in job_fields()
    }
