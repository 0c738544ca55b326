"""The cluster definitions parse, and their resources agree with what the plan assumes."""

from pathlib import Path

import pytest
import yaml

from pipeline.planning.plan import ClusterSpec, PlanRequest, make_plan
from pipeline.planning.scheduler_config import load_scheduler_config
from pipeline.stages.model import KNOWN_SHAPES

pytestmark = pytest.mark.unit

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
E5_BASE = KNOWN_SHAPES["intfloat/e5-base-v2"]
# instance type -> (GPUs, vCPUs, accelerator): what the launcher's resources must say
AWS_INSTANCES = {
    "g5.2xlarge": (1, 8, "A10G"),
    "p5.48xlarge": (8, 192, "H100"),
    "c6i.8xlarge": (0, 32, None),
    "m6i.2xlarge": (0, 8, None),
}
GPU_PRODUCTS = {
    "NVIDIA-H100-80GB-HBM3": "H100",
    "NVIDIA-A100-SXM4-80GB": "A100-80G",
    "Tesla-T4": "T4",
    "NVIDIA-A10G": "A10G",
    "NVIDIA-L4": "L4",
}


@pytest.fixture(scope="module")
def scheduler():
    return load_scheduler_config()  # the packaged profiles


def _cpu(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_kuberay_raycluster(scheduler):
    doc = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"].startswith("2.6")
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    gpus = cpus = 0.0
    accelerator = None
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests == limits  # guaranteed QoS: Ray's logical resources are real
        gpu = int(limits.get("nvidia.com/gpu", 0))
        if gpu:
            assert int(group["rayStartParams"]["num-gpus"]) == gpu
            assert container["image"].endswith("-gpu")
            product = group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
            accelerator = GPU_PRODUCTS[product]
        gpus += gpu * group["maxReplicas"]
        cpus += _cpu(limits["cpu"]) * group["maxReplicas"]
    plan = make_plan(
        ClusterSpec(
            gpus=int(gpus),
            cpus=cpus,
            nodes=sum(g["maxReplicas"] for g in spec["workerGroupSpecs"]),
            accelerator=accelerator,
        ),
        E5_BASE,
        PlanRequest(),
        scheduler,
    )
    assert plan.device == "cuda" and plan.profile == accelerator
    # every GPU pod has CPUs for its encode actors (1 CPU each) plus a reader/writer
    gpu_group = next(g for g in spec["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus"))
    pod_cpus = _cpu(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert pod_cpus >= plan.actors_per_gpu * plan.encode_num_cpus + 1
    # and the cluster has the CPUs the plan wants for tokenizers at full scale
    assert plan.tokenizer_actors + plan.gpu_actors <= cpus
    assert not plan.notes, plan.notes


def test_aws_cluster_launcher(scheduler):
    doc = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert doc["provider"]["type"] == "aws"
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"]["CPU"] == 0
    assert doc["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n != doc["head_node_type"])
    for name, node in types.items():
        gpus, vcpus, accelerator = AWS_INSTANCES[node["node_config"]["InstanceType"]]
        resources = node["resources"]
        if name != doc["head_node_type"]:
            assert resources["CPU"] == vcpus and resources.get("GPU", 0) == gpus
            assert 0 <= node["min_workers"] <= node["max_workers"]
        if gpus:
            assert resources[f"accelerator_type:{accelerator}"] == 1
            plan = make_plan(
                ClusterSpec(gpus=gpus, cpus=vcpus, accelerator=accelerator), E5_BASE, PlanRequest(), scheduler
            )
            assert plan.profile == accelerator and plan.estimated_peak_gpu_memory_gb < plan.gpu_memory_gb
        assert "IamInstanceProfile" in node["node_config"]  # S3 through a role, no keys
    assert types["gpu_a10g_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert any("RAY_AUTH_MODE=token" in c for c in doc["head_start_ray_commands"])
    text = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "aws_secret_access_key" not in text.lower() and "AKIA" not in text
