"""Job files parse into valid job configs; the KubeRay RayJob is consistent with the cluster files."""

from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser, job_config_from_args

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_job_yamls_are_valid_job_configs():
    for name in ("local_cpu.yaml", "s3_e5_base_gpu.yaml"):
        args = build_parser().parse_args(
            ["run", "--config", str(ROOT / "jobs" / name), "--input", "s3://b/in/", "--output", "s3://b/out/"]
        )
        config = job_config_from_args(args)
        assert config.inputs == ("s3://b/in/",) and config.output == "s3://b/out/"
    gpu = yaml.safe_load((ROOT / "jobs" / "s3_e5_base_gpu.yaml").read_text())
    assert gpu["model"] == "intfloat/e5-base-v2" and gpu["input"][0].startswith("s3://")
    assert not any("secret" in str(k).lower() or "key" in str(k).lower() for k in gpu)


def test_kuberay_rayjob():
    job = yaml.safe_load((ROOT / "jobs" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m pipeline run --config jobs/")
    assert (ROOT / spec["entrypoint"].split("--config ")[1].split()[0]).exists()
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" in runtime_env
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    reference = yaml.safe_load((ROOT / "cluster" / "kuberay-raycluster.yaml").read_text())["spec"]
    assert cluster["rayVersion"] == reference["rayVersion"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for ref in reference["workerGroupSpecs"]:  # same pod shapes as the long-lived cluster
        ours = groups[ref["groupName"]]["template"]["spec"]["containers"][0]["resources"]
        assert ours == ref["template"]["spec"]["containers"][0]["resources"]
    job_file = yaml.safe_load((ROOT / spec["entrypoint"].split("--config ")[1].split()[0]).read_text())
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus"))
    # the encode pool may grow exactly as far as the GPU group autoscales
    assert job_file["max_gpus"] == gpu_group["maxReplicas"] * int(gpu_group["rayStartParams"]["num-gpus"])
    assert job_file["min_gpus"] >= 1 and gpu_group["minReplicas"] == 0


def test_airflow_requirements_have_no_torch():
    lines = [
        line.split("#")[0].strip() for line in (ROOT / "jobs" / "airflow" / "requirements.txt").read_text().splitlines()
    ]
    pkgs = [line for line in lines if line]
    assert pkgs and all("torch" not in p and "transformers" not in p for p in pkgs)
    assert any(p.startswith("ray") for p in pkgs)
