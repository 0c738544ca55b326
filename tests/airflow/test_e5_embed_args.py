"""The DAG's argument building and connection checks (plain functions: no Airflow needed)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs" / "airflow"))
from e5_embed_args import DENIED_FLAGS, RUN_FLAGS, BadParams, build_entrypoint, dashboard_address, scrub_log  # noqa: E402

from pipeline.cli import build_parser  # noqa: E402

pytestmark = pytest.mark.unit

BASE = {"input": "s3://c/shards/", "output": "s3://e/out/", "model": "intfloat/e5-base-v2", "prefix": "passage"}


def test_run_flags_are_exactly_the_cli_run_flags():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {}
    for action in run._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                flags[option] = action.nargs != 0
    assert flags == RUN_FLAGS


@pytest.mark.parametrize(
    "extra",
    [
        "--rows-per-file 1000; touch /tmp/pwned #",
        "--rows-per-file 1000 && curl evil",
        "$(touch /tmp/pwned)",
        "--output-dtype float16 `id`",
        "--ray-address ray://elsewhere:10001",
        '--storage-options \'{"secret": "x"}\'',
        "--overwrite=yes",
        "--rows-per-file",
        "'unterminated",
    ],
)
def test_shell_text_and_unknown_or_denied_flags_are_refused(extra):
    with pytest.raises(BadParams):
        build_entrypoint({**BASE, "extra_args": extra})


def test_values_with_shell_characters_stay_one_argument():
    entry = build_entrypoint(
        {**BASE, "output": "s3://e/out; rm -rf /", "extra_args": "--title-field 'a b;c' --overwrite"}
    )
    args = shlex.split(entry)
    assert args[args.index("--output") + 1] == "s3://e/out; rm -rf /"
    assert args[-3:] == ["--title-field", "a b;c", "--overwrite"]
    assert DENIED_FLAGS <= set(RUN_FLAGS)


def test_token_is_not_sent_over_plain_http_to_a_remote_host():
    assert dashboard_address(schema="http", host="127.0.0.1", port=8265, has_token=True) == "http://127.0.0.1:8265"
    assert dashboard_address(schema="https", host="ray.example", port=443, has_token=True) == "https://ray.example:443"
    assert dashboard_address(schema="http", host="ray.example", port=None, has_token=False) == "http://ray.example:8265"
    with pytest.raises(BadParams, match="plain http"):
        dashboard_address(schema="http", host="ray.example", port=8265, has_token=True)
    assert (
        dashboard_address(
            schema="http", host="10.0.0.5", port=8265, has_token=True, extra={"allow_insecure_token": True}
        )
        == "http://10.0.0.5:8265"
    )


def test_log_lines_are_scrubbed():
    log = (
        "connecting with TOKEN-abc123\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI s3://AKIA1:sekrit@bucket/x "
        "my_password: hunter22"
    )
    clean = scrub_log(log, ["TOKEN-abc123"])
    for secret in ("TOKEN-abc123", "wJalrXUtnFEMI", "sekrit", "AKIA1", "hunter22"):
        assert secret not in clean
    assert "s3://***@bucket/x" in clean


@pytest.mark.parametrize("where", ["param", "extra_args"])
@pytest.mark.parametrize("key", ["ray_address: ray://elsewhere:10001", "storage-options: {key: leaked}"])
def test_a_triggered_config_file_cannot_pick_the_cluster_or_carry_secrets(tmp_path, where, key):
    """A --config named by a trigger (as a param or inside extra_args) that sets a denied key is
    refused by the job itself: the entrypoint always says the file is untrusted."""
    from pipeline.cli import job_config_from_args
    from pipeline.errors import UsageError

    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"input: s3://c/shards/\n{key}\n")
    params = {**BASE, "config": str(job_file)} if where == "param" else {**BASE, "extra_args": f"--config {job_file}"}
    argv = shlex.split(build_entrypoint(params))[3:]  # after `python -m pipeline`
    args = build_parser().parse_args(argv)
    with pytest.raises(UsageError, match=r"sets (ray_address|storage_options), which a job file chosen by a trigger"):
        job_config_from_args(args)
    trusted = build_parser().parse_args([a for a in argv if a != "--untrusted-config"])
    assert job_config_from_args(trusted).output == "s3://e/out/"  # the operator's own job files may


def test_the_runtime_env_is_the_deployments_never_a_triggers():
    from e5_embed_args import deployment_runtime_env

    assert deployment_runtime_env({}) == {}
    assert deployment_runtime_env({"E5_EMBED_WORKING_DIR": "s3://ops/e5.zip"}) == {"working_dir": "s3://ops/e5.zip"}
    dag = (Path(__file__).resolve().parents[2] / "jobs" / "airflow" / "e5_embed_dag.py").read_text()
    ray_job = (Path(__file__).resolve().parents[2] / "jobs" / "airflow" / "ray_job.py").read_text()
    assert "params.working_dir" not in dag and '"working_dir": Param' not in dag
    assert 'template_fields: Sequence[str] = ("entrypoint",)' in ray_job  # params are not rendered into it


def test_the_verify_task_runs_verify_on_the_runs_output_with_every_value_one_argument():
    from e5_embed_args import BadParams, build_verify_entrypoint

    params = {"output": "s3://b/out; rm -rf / #", "verify_sample": 50, "iceberg_table": "e.docs"}
    argv = shlex.split(build_verify_entrypoint(params))
    assert argv[:4] == ["python", "-m", "pipeline", "verify"]
    assert argv[argv.index("--output") + 1] == "s3://b/out; rm -rf / #"  # one argument, never shell text
    assert argv[argv.index("--sample") + 1] == "50" and argv[argv.index("--iceberg-table") + 1] == "e.docs"
    for bad in (-1, "5; ls", True, 2.5):
        with pytest.raises(BadParams, match="verify_sample must be a whole number"):
            build_verify_entrypoint({**params, "verify_sample": bad})
