"""`alexnet train` on a real two-node Ray cluster on this machine (tests/support/ray_cluster.py), with
Ray's token authentication as the session has it: the head (the driver's node) has no CPUs, so
the train worker and every Ray Data task run on the other node; the dataset is read from moto's
S3 server and the checkpoints go to it. Users meet these faults: a worker node that dies mid-run
(its raylet SIGKILLed, a new node joining), a driver killed and run again with the same run name,
and checkpoints left on the default node-local folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alexnet.train import checkpoint
from tests.support.mlflow_server import MlflowServer
from tests.support.ray_cluster import RayCluster
from tests.support import new_bucket, wait_for

pytestmark = pytest.mark.slow

EXPERIMENT = "two-nodes"


@pytest.fixture(scope="module")
def cluster():
    c = RayCluster.start(head_cpus=0)
    try:
        c.add_node(cpus=2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return new_bucket("two-nodes")


@pytest.fixture(scope="module")
def s3_dataset(cluster, bucket, shapes_source) -> str:
    """The shapes images copied to the bucket (a local folder is one node's: refused on a cluster),
    then ingested there by `alexnet ingest`, run on the cluster."""
    import pyarrow.fs

    fs, _ = pyarrow.fs.FileSystem.from_uri(bucket)
    pyarrow.fs.copy_files(str(shapes_source), f"{bucket[5:]}/raw/shapes", destination_filesystem=fs)
    dest = f"{bucket}/datasets/shapes"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", f"{bucket}/raw/shapes", dest, "--resize", "72",
                        "--val-fraction", "0.25"], env=cluster.env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dest


def _train(dataset: str, workdir: Path, tracking_uri: str, run_name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "train", "--recipe", "smoke", "--data", dataset, "--workdir", str(workdir),
            "--tracking-uri", tracking_uri, "--experiment", EXPERIMENT, "--run-name", run_name,
            "--set", "optim.batch_size=16", *extra]


def _runs(tracking_uri: str, run_name: str) -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


@pytest.mark.fault("a request to a two-node cluster's job server without the token", inputs=1,
                   outcome="HTTP 401; the same request with the token answered")
def test_the_job_server_answers_only_with_the_token_when_token_auth_is_on(cluster):
    import urllib.error
    import urllib.request

    if cluster.token is None:
        assert os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled"  # off only when the session says so
        urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=30).read()
        return
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=30)
    assert refused.value.code == 401
    allowed = urllib.request.Request(f"{cluster.dashboard}/api/version",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    urllib.request.urlopen(allowed, timeout=30).read()


@pytest.mark.fault("`alexnet train` with the default local --storage on a two-node cluster", inputs=1,
                   outcome="exit 2, one error line naming --storage and the fix; no checkpoint folder, no "
                           "MLflow run")
def test_the_default_local_storage_on_two_nodes_is_one_line_before_training(cluster, s3_dataset, mlflow_server,
                                                                             tmp_path):
    work = tmp_path / "work"
    r = subprocess.run(_train(s3_dataset, work, mlflow_server.uri, "local-storage"), env=cluster.env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"alexnet train: error: --storage {work / 'runs'} is a folder on each node's own disk")
    assert "the Ray cluster has 2 nodes" in errors[0] and "pass --storage s3://BUCKET/PREFIX" in errors[0]
    assert not (work / "runs").exists() and _runs(mlflow_server.uri, "local-storage") == []  # nothing started


@pytest.mark.fault("`alexnet ingest` of a local folder into a local DEST on a two-node cluster", inputs=1,
                   outcome="exit 2, one error line naming SOURCE, the node and the fix; DEST not created")
def test_ingest_of_node_local_folders_on_two_nodes_is_one_line(cluster, shapes_source, tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", str(shapes_source), str(tmp_path / "ds")],
                       env=cluster.env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"alexnet ingest: error: SOURCE {shapes_source} is a folder on each node's own disk")
    assert "pass SOURCE s3://BUCKET/PREFIX" in errors[0] and not (tmp_path / "ds").exists()


@pytest.mark.fault("the worker node's raylet SIGKILLed mid-fit (a node joins), then the driver "
                   "SIGKILLed; the same command rerun", inputs=2,
                   outcome="one line for the lost node; the rerun resumes from S3 at the next epoch; one "
                           "MLflow run FINISHED with one point per epoch; the model registered")
def test_a_killed_worker_node_and_a_killed_driver_resume_from_s3_in_the_same_mlflow_run(cluster, s3_dataset, bucket,
                                                                                        mlflow_server, tmp_path):
    runs, name, epochs = f"{bucket}/runs", "two-nodes", 8  # short epochs: room to kill the driver mid-run
    cmd = _train(s3_dataset, tmp_path / "work", mlflow_server.uri, name, "--storage", runs,
                 "--set", f"optim.epochs={epochs}", "--set", "run.max_failures=1")
    client = MlflowClient(mlflow_server.uri)

    def logged_steps() -> list[int]:
        found = _runs(mlflow_server.uri, name)
        return sorted(m.step for m in client.get_metric_history(found[0].info.run_id, "val/top1")) if found else []

    first_log = tmp_path / "driver-1.log"
    with open(first_log, "w") as log:
        driver = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1. The worker node dies (its raylet, SIGKILL: the train worker and the data tasks with it)
        #    right after epoch 1's metrics are logged, and another node joins: the worker group
        #    restarts there from the last checkpoint, and epoch 1 is logged once.
        wait_for(lambda: 1 in logged_steps() or driver.poll() is not None, 600, "epoch 1's metrics")
        assert driver.poll() is None, first_log.read_text()[-3000:]
        victim = cluster.workers[0]
        cluster.kill_raylet(victim)
        replacement = cluster.add_node(cpus=2)
        # 2. The driver dies once the restarted group has checkpointed a later epoch; the same
        #    command, run again, continues from S3.
        wait_for(lambda: (checkpoint.find_latest(runs, name) or (None, -1))[1] >= 2 or driver.poll() is not None,
                  600, "a checkpoint of the restarted worker group")
        assert driver.poll() is None, first_log.read_text()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    done = checkpoint.find_latest(runs, name)[1]
    assert 2 <= done < epochs - 1
    # The lost node is one line of the driver's, naming the epoch the restarted workers begin with.
    lost = re.findall(rf"^worker \d failed \((.+)\); resuming at epoch (\d)/{epochs} from the last checkpoint "
                      rf"\(restart 1, run.max_failures=1\)$", first_log.read_text(), re.M)
    assert len(lost) == 1 and int(lost[0][1]) >= 2, first_log.read_text()[-3000:]
    assert lost[0][0].startswith("its node "), lost  # says the node, not just a process, was lost

    rerun = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert (f"resuming run {name} at epoch {done + 2}/{epochs}, from its checkpoint of epoch {done + 1}: "
            f"{runs}/{name}/checkpoint_") in rerun.stdout
    best = re.search(rf"^best epoch: \d of {epochs}, val top-1 [0-9.]+; checkpoint (\S+)$", rerun.stdout, re.M)
    assert best and best.group(1).startswith(f"{runs}/{name}/checkpoint_"), rerun.stdout[-2000:]

    # One MLflow run for the whole story, one point per epoch, the model registered from S3.
    (run,) = _runs(mlflow_server.uri, name)
    assert logged_steps() == list(range(epochs))
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == str(done)
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "alexnet"

    # Where everything ran: never on the driver's node; on the node that died and on its replacement.
    head = cluster.head.node_id
    workers = {a["node_id"] for a in cluster.state("actors", "class_name=RayTrainWorker")}
    data = {t["node_id"] for t in cluster.state("tasks") if "_run_units" in t["name"] and t.get("node_id")}
    assert head not in workers and {victim.node_id, replacement.node_id} <= workers
    assert head not in data and {victim.node_id, replacement.node_id} <= data
