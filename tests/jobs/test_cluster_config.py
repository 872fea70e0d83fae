"""cluster.yaml passes Ray's own launcher validation, keeps the dashboard private and MLflow
durable and behind a login; the KubeRay manifests carry the fields the operator's CRDs require,
token authentication, shared storage and a run name per job, behind a NetworkPolicy. No cloud calls."""

from __future__ import annotations

import configparser
import copy
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import wait_for

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


SSM = {"/alexnet/ray/auth-token": "ray-token-0123", "/alexnet/mlflow/jobs-password": "pa%ss/wo@rd",
       "/alexnet/mlflow/backend-uri": "postgresql://mlflow:db%pass@rds.internal/mlflow",
       "/alexnet/mlflow/auth-db-uri": "postgresql://auth:au%th@rds.internal/auth",
       "/alexnet/mlflow/admin-password": "admin-secret-77"}


def _commands(key: str, *needles: str) -> list[str]:
    found = [c for c in load("cluster.yaml")[key] if all(n in c for n in needles)]
    assert found, (key, needles)
    return found


def _run_setup(tmp_path: Path, commands: list[str], ssm: dict) -> subprocess.CompletedProcess:
    """cluster.yaml's setup commands run by bash as the launcher runs them, with HOME in tmp_path,
    /dev/shm moved to tmp_path/shm, and stand-ins (no cloud call, no server) for `aws` (answers from
    `ssm`), `pgrep` (no server yet) and `mlflow` (writes its arguments and MLFLOW_* environment to
    HOME/mlflow-server.json)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fakes = {
        "aws": "import json, sys\nargs = sys.argv[1:]\n"
               f"ssm = json.loads({json.dumps(json.dumps(ssm))})\n"
               "name = args[args.index('--name') + 1]\n"
               "if name not in ssm: sys.exit('ParameterNotFound: ' + name)\nprint(ssm[name])\n",
        "pgrep": "import sys\nsys.exit(1)\n",
        "mlflow": "import json, os, sys\nenv = {k: v for k, v in os.environ.items() if k.startswith('MLFLOW_')}\n"
                  "out = os.path.join(os.environ['HOME'], 'mlflow-server.json')\n"
                  "open(out + '.tmp', 'w').write(json.dumps({'argv': sys.argv[1:], 'env': env}))\n"
                  "os.rename(out + '.tmp', out)\n",
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    script = " && ".join(f"( {c} )" for c in commands).replace("/dev/shm/", f"{tmp_path}/shm/")
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_every_node_gets_rays_token_and_only_the_head_the_jobs_mlflow_login(tmp_path):
    from mlflow.utils.credentials import read_mlflow_creds

    worker = _run_setup(tmp_path / "worker", _commands("setup_commands", "ssm get-parameter"), SSM)
    assert worker.returncode == 0, worker.stderr
    token = tmp_path / "worker" / "home" / ".ray" / "auth_token"
    assert token.read_text().strip() == SSM["/alexnet/ray/auth-token"]
    assert token.stat().st_mode & 0o077 == 0  # the node's user only
    assert not (tmp_path / "worker" / "home" / ".mlflow").exists()  # workers never call MLflow

    head = _run_setup(tmp_path / "head", _commands("head_setup_commands", "jobs-password"), SSM)
    assert head.returncode == 0, head.stderr
    creds = tmp_path / "head" / "home" / ".mlflow" / "credentials"
    assert creds.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in creds.parent.iterdir()) == ["credentials"]  # no temporary left
    with pytest.MonkeyPatch.context() as mp:  # what a job's MLflow client on the head logs in with
        mp.setenv("HOME", str(creds.parent.parent))
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.delenv(name, raising=False)
        assert read_mlflow_creds() == ("alexnet-jobs", SSM["/alexnet/mlflow/jobs-password"])


def test_the_heads_mlflow_listens_on_loopback_and_its_secrets_never_reach_the_disk(tmp_path):
    done = _run_setup(tmp_path, _commands("head_setup_commands", "mlflow server"), SSM)
    assert done.returncode == 0, done.stderr
    record = tmp_path / "home" / "mlflow-server.json"
    server = json.loads(wait_for(lambda: record.is_file() and record.read_text(), 20, "the MLflow server's start"))
    argv = server["argv"]
    assert argv[:3] == ["server", "--app-name", "basic-auth"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # jobs run on the head; you come by SSH tunnel
    assert server["env"]["MLFLOW_BACKEND_STORE_URI"] == SSM["/alexnet/mlflow/backend-uri"]
    assert server["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server["env"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == SSM["/alexnet/mlflow/admin-password"]
    auth_ini = Path(server["env"]["MLFLOW_AUTH_CONFIG_PATH"])
    assert auth_ini.parent == tmp_path / "shm" / "alexnet-mlflow" and auth_ini.stat().st_mode & 0o077 == 0
    ini = configparser.ConfigParser()  # as MLflow's auth app reads it: % must survive interpolation
    ini.read(auth_ini)
    assert ini["mlflow"]["database_uri"] == SSM["/alexnet/mlflow/auth-db-uri"]
    secrets = [v for k, v in SSM.items() if k != "/alexnet/mlflow/jobs-password"]
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file() and path.name != "mlflow-server.json":  # the stand-in's own record
            assert not any(s in path.read_text(errors="replace") for s in secrets), path


@pytest.mark.fault("a node whose SSM parameter is missing", inputs=2,
                   outcome="its setup fails (Ray's launcher stops there); no half-written token; MLflow not started")
def test_a_missing_parameter_stops_the_node_setup(tmp_path):
    done = _run_setup(tmp_path / "worker", _commands("setup_commands", "ssm get-parameter"), {})
    assert done.returncode != 0 and "ParameterNotFound" in done.stderr
    assert not (tmp_path / "worker" / "home" / ".ray" / "auth_token").exists()
    no_admin = {k: v for k, v in SSM.items() if not k.endswith("admin-password")}
    done = _run_setup(tmp_path / "head", _commands("head_setup_commands", "mlflow server"), no_admin)
    assert done.returncode != 0 and "ParameterNotFound" in done.stderr
    time.sleep(1)  # a server started in the background would have written its record by now
    assert not (tmp_path / "head" / "home" / "mlflow-server.json").exists()


def test_every_node_type_names_its_security_group_so_ray_opens_no_ssh_to_the_world(monkeypatch):
    """Ray's AWS bootstrap creates a security group with SSH open to 0.0.0.0/0 for any node type
    without SecurityGroupIds; given one for every type, it creates none."""
    from ray.autoscaler._private.aws import config as aws_config

    def refuse(*_args, **_kwargs):
        raise AssertionError("Ray would create its default security group (SSH from 0.0.0.0/0)")

    monkeypatch.setattr(aws_config, "_upsert_security_groups", refuse)
    cfg = load("cluster.yaml")
    aws_config._configure_security_group(copy.deepcopy(cfg))
    groups = {tuple(t["node_config"]["SecurityGroupIds"]) for t in cfg["available_node_types"].values()}
    assert len(groups) == 1  # one group: its members reach each other


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
    assert first.tracking_uri.startswith("https://")  # MLflow's basic-auth login never in clear text
    if doc["kind"] == "RayCronJob":
        assert first.trigger == "schedule"


def _job_spec(name: str) -> dict:
    doc = load(name)
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def _pods(spec: dict) -> dict[str, dict]:
    cluster = spec["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"], "submitter": spec["submitterPodTemplate"]["spec"]}
    pods.update({w["groupName"]: w["template"]["spec"] for w in cluster["workerGroupSpecs"]})
    return pods


@pytest.mark.parametrize("name", ["k8s/rayjob.yaml", "k8s/raycronjob.yaml"])
def test_kuberay_pods_run_unprivileged_from_pinned_images_without_api_tokens(name):
    for role, pod in _pods(_job_spec(name)).items():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, role
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, role
        # Only the head talks to the Kubernetes API (KubeRay's autoscaler sidecar, with autoscaling on).
        assert pod["automountServiceAccountToken"] is (role == "head"), role
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (role, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (role, c["name"])
            assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", c["image"]), (role, c["image"])  # a tag can move
            assert {p["containerPort"] for p in c.get("ports", [])} <= {6379, 8265}, role  # no Ray Client port


@pytest.mark.parametrize("name", ["k8s/rayjob.yaml", "k8s/raycronjob.yaml"])
def test_kuberay_jobs_reach_mlflow_over_tls_from_the_head_only_and_get_time_to_end_their_run(name):
    spec = _job_spec(name)
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert int(env_vars["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30  # Ray's 3 s SIGKILLs before the run ends KILLED
    for role, pod in _pods(spec).items():
        for c in pod["containers"]:
            login = any(ref.get("secretRef", {}).get("name") == "alexnet-mlflow" for ref in c.get("envFrom", []))
            assert login is (role == "head"), role  # the job driver runs on the head; no worker calls MLflow
    head = _pods(spec)["head"]
    container = head["containers"][0]
    ca = {e["name"]: e["value"] for e in container["env"]}["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    mount = next(m for m in container["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "alexnet-mlflow-ca" and mount["readOnly"] is True


def test_the_nightly_job_is_the_single_run_job_on_a_schedule():
    single, nightly = _job_spec("k8s/rayjob.yaml"), _job_spec("k8s/raycronjob.yaml")
    assert {k: v for k, v in nightly.items() if k != "entrypoint"} == {k: v for k, v in single.items() if k != "entrypoint"}
    assert nightly["entrypoint"] == single["entrypoint"].replace(
        "--trigger manual", "--trigger schedule --tag schedule=k8s-nightly")


def test_the_network_policy_admits_the_clusters_own_pods_and_the_operator_to_the_job_server():
    policy = load("k8s/networkpolicy.yaml")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == dict([POD_LABEL]) and spec["policyTypes"] == ["Ingress"]
    own, operator = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": dict([POD_LABEL])}}]}
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
