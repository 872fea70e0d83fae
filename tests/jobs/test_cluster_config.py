"""cluster.yaml passes Ray's own launcher validation, keeps the dashboard private and MLflow
durable and behind a login; the KubeRay manifests carry the fields the operator's CRDs require,
token authentication, shared storage and a run name per job, behind a NetworkPolicy. No cloud calls."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


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


def test_mlflow_on_the_head_is_durable_and_asks_for_a_login():
    cfg = load("cluster.yaml")
    setup = " ".join(cfg["head_setup_commands"])
    assert "mlflow server --app-name basic-auth" in setup
    assert "MLFLOW_BACKEND_STORE_URI=" in setup and "psycopg2" in setup and "sqlite" not in setup  # Postgres (RDS)
    assert "--artifacts-destination s3://" in setup
    assert "postgresql://" not in (ROOT / "cluster.yaml").read_text()  # the URIs and passwords come from SSM
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    assert all(t["node_config"].get("IamInstanceProfile") for t in workers)  # Ray gives workers no role for S3


SSM = {"/alexnet/ray/auth-token": "ray-token-0123", "/alexnet/mlflow/jobs-password": "pa%ss/wo@rd"}


def _run_node_setup(tmp_path: Path, ssm: dict) -> subprocess.CompletedProcess:
    """cluster.yaml's setup commands that fetch the node's credentials, run by bash as the launcher
    runs them, with a stand-in `aws` answering from `ssm` (no cloud call) and HOME in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "aws"
    fake.write_text("#!/usr/bin/env python3\nimport json, sys\nargs = sys.argv[1:]\n"
                    f"ssm = json.loads({json.dumps(json.dumps(ssm))})\n"
                    "name = args[args.index('--name') + 1]\n"
                    "if name not in ssm: sys.exit('ParameterNotFound: ' + name)\nprint(ssm[name])\n")
    fake.chmod(0o755)
    commands = [c for c in load("cluster.yaml")["setup_commands"] if "ssm get-parameter" in c]
    assert commands
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", " && ".join(f"( {c} )" for c in commands)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_every_node_gets_rays_token_and_the_jobs_mlflow_login_in_private_files(tmp_path):
    from mlflow.utils.credentials import read_mlflow_creds

    done = _run_node_setup(tmp_path, SSM)
    assert done.returncode == 0, done.stderr
    token, creds = tmp_path / ".ray" / "auth_token", tmp_path / ".mlflow" / "credentials"
    assert token.read_text().strip() == SSM["/alexnet/ray/auth-token"]
    for path in (token, creds):
        assert path.stat().st_mode & 0o077 == 0, path  # the node's user only
    assert sorted(p.name for p in (tmp_path / ".mlflow").iterdir()) == ["credentials"]  # no temporary left
    with pytest.MonkeyPatch.context() as mp:  # what a job's MLflow client on that node logs in with
        mp.setenv("HOME", str(tmp_path))
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.delenv(name, raising=False)
        assert read_mlflow_creds() == ("alexnet-jobs", SSM["/alexnet/mlflow/jobs-password"])


@pytest.mark.fault("a node whose SSM parameter is missing", inputs=1,
                   outcome="its setup fails (Ray's launcher stops there); no half-written token")
def test_a_missing_parameter_stops_the_node_setup(tmp_path):
    done = _run_node_setup(tmp_path, {"/alexnet/ray/auth-token": "t"})
    assert done.returncode != 0 and "ParameterNotFound" in done.stderr
    assert not (tmp_path / ".mlflow" / "credentials").exists()


def test_every_ray_start_requires_the_token():
    cfg = load("cluster.yaml")
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key] if "ray start" in c]
    assert len(starts) == 2 and all(shlex.split(c)[0] == "RAY_AUTH_MODE=token" for c in starts)


# What KubeRay's v1 CRDs (ray.io_rayjobs.yaml, ray.io_raycronjobs.yaml, KubeRay 1.6) mark required.
RAYJOB_REQUIRED = {"rayClusterSpec": ["headGroupSpec"], "rayClusterSpec.headGroupSpec": ["template"],
                   "rayClusterSpec.workerGroupSpecs[]": ["groupName", "maxReplicas", "minReplicas", "template"],
                   "submitterPodTemplate.spec": ["containers"]}
POD_LABEL = ("app.kubernetes.io/part-of", "alexnet-pipeline")  # what k8s/networkpolicy.yaml selects


def _at(spec: dict, path: str) -> list[dict]:
    nodes = [spec]
    for part in path.split("."):
        many = part.endswith("[]")
        nodes = [n.get(part.rstrip("[]")) for n in nodes if part.rstrip("[]") in n]
        nodes = [item for n in nodes for item in n] if many else nodes
    return nodes


def _job_spec_ok(spec: dict) -> None:
    for path, fields in RAYJOB_REQUIRED.items():
        for node in _at(spec, path):
            assert all(f in node for f in fields), (path, fields)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "alexnet-ray-token"}
    templates = [cluster["headGroupSpec"]["template"], *(w["template"] for w in cluster["workerGroupSpecs"]),
                 spec["submitterPodTemplate"]]
    for t in templates:
        assert t["metadata"]["labels"][POD_LABEL[0]] == POD_LABEL[1]
        assert all(c.get("image") and c.get("name") for c in t["spec"]["containers"])
    for w in cluster["workerGroupSpecs"]:
        assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for w in cluster["workerGroupSpecs"]
            for c in w["template"]["spec"]["containers"]]
    assert any(gpus)


def _entrypoint_args(spec: dict, submission_id: str):
    """The entrypoint as `alexnet train` parses it after the submitter's shell expanded it."""
    from jobs.cli import build_parser

    words = shlex.split(spec["entrypoint"].replace("$RAY_JOB_SUBMISSION_ID", submission_id))
    assert words[:3] == ["python", "-m", "jobs.cli"]
    return build_parser().parse_args(words[3:])


@pytest.mark.parametrize("name", ["k8s/rayjob.yaml", "k8s/raycronjob.yaml"])
def test_kuberay_jobs_train_from_shared_storage_behind_token_auth_with_a_run_name_per_job(name):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    if doc["kind"] == "RayCronJob":
        from croniter import croniter

        assert croniter.is_valid(doc["spec"]["schedule"])
        spec = doc["spec"]["jobTemplate"]
    else:
        assert doc["kind"] == "RayJob"
        spec = doc["spec"]
    _job_spec_ok(spec)
    first, second = (_entrypoint_args(spec, f"{doc['metadata']['name']}-{s}") for s in ("abcde", "fghij"))
    assert first.command == "train" and first.storage.startswith("s3://") and first.data.startswith("s3://")
    assert first.run_name != second.run_name  # every submission is its own run...
    assert first.run_name == f"{doc['metadata']['name']}-abcde"  # ...named after it
    assert first.tracking_uri.startswith("http")
    if doc["kind"] == "RayCronJob":
        assert first.trigger == "schedule"


def test_the_network_policy_admits_the_clusters_own_pods_and_the_operator_to_the_job_server():
    policy = load("k8s/networkpolicy.yaml")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == dict([POD_LABEL]) and spec["policyTypes"] == ["Ingress"]
    own, operator = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": dict([POD_LABEL])}}]}
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
