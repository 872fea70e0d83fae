"""cluster.yaml passes Ray's own launcher validation, keeps the dashboard private, and the KubeRay
manifests carry the fields the operator requires. No cloud calls."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(load("cluster.yaml")))  # what `ray up` does before any cloud call
    validate_config(config)
    assert config["provider"]["type"] == "aws" and config["idle_timeout_minutes"] > 0


def test_gpu_groups_have_gpus_and_the_head_trains_nothing():
    cfg = load("cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] <= 2
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].split(".")[0] in ("g5", "g6", "p4d", "p5")]
    assert gpu and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in gpu)
    assert any(t["resources"].get("GPU", 0) == 0 and t is not head for t in types.values())  # Ray Data CPU group
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"])


def test_dashboard_is_never_open_to_the_internet():
    cfg = load("cluster.yaml")
    text = yaml.safe_dump(cfg)
    assert "0.0.0.0/0" not in text
    for node in cfg["available_node_types"].values():
        for group in node["node_config"].get("SecurityGroupIds", []):
            assert "8265" not in str(group)
    assert all("--dashboard-host=0.0.0.0" not in c for c in cfg["head_start_ray_commands"])


def _cluster_spec_ok(spec: dict) -> None:
    assert spec["entrypoint"].startswith("python -m jobs.cli ")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        containers = g["template"]["spec"]["containers"]
        assert containers and all(c.get("image") and c.get("name") for c in containers)
    for w in cluster["workerGroupSpecs"]:
        assert w["groupName"] and w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for w in cluster["workerGroupSpecs"]
            for c in w["template"]["spec"]["containers"]]
    assert any(gpus)


def test_rayjob_manifest_has_the_fields_kuberay_requires():
    job = load("k8s/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    _cluster_spec_ok(job["spec"])


def test_raycronjob_manifest_schedules_a_rayjob_template():
    from croniter import croniter

    cron = load("k8s/raycronjob.yaml")
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob"
    assert croniter.is_valid(cron["spec"]["schedule"])
    assert "--trigger schedule" in cron["spec"]["jobTemplate"]["entrypoint"]
    _cluster_spec_ok(cron["spec"]["jobTemplate"])
