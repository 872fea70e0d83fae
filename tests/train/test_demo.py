"""End to end: `alexnet demo` at a small size, and what a user sees afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from alexnet.track.tracking import using_store
from jobs.cli import main
from pipelines.dataset import SCHEMA, open_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_root(ray_local, tmp_path_factory):
    """A folder where `alexnet demo` ran as README runs it: no --workdir, so in ./alexnet-demo."""
    root = tmp_path_factory.mktemp("user")
    before = os.getcwd()
    os.chdir(root)
    try:
        # Two workers on the 2-CPU fixture cluster: must not hang (Ray Data keeps CPUs).
        rc = main(["demo", "--images-per-class", "20", "--epochs", "2", "--workers", "2",
                   "--set", "optim.batch_size=16", "--set", "model.hidden=256"])
    finally:
        os.chdir(before)
    assert rc == 0
    return root


@pytest.fixture(scope="module")
def demo_workdir(demo_root):
    return demo_root / "alexnet-demo"


def test_demo_writes_a_valid_parquet_dataset(demo_workdir):
    info = open_dataset(demo_workdir / "datasets" / "hue-shapes-20")
    assert info.num_classes == 6 and info.split_size("train") > 0 and info.split_size("val") > 0
    shard = info.shard_paths("train")[0]
    schema = pq.read_schema(shard)
    for field in SCHEMA:
        assert schema.field(field.name).type == field.type


def test_demo_run_is_tracked_with_params_metrics_and_a_loadable_model(demo_workdir):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{demo_workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("alexnet-demo")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "torchvision"
    assert run.data.params["optim.epochs"] == "2"
    assert run.data.params["run.num_workers"] == "2"
    assert run.data.params["dataset.version"] == open_dataset(demo_workdir / "datasets" / "hue-shapes-20").version
    for key in ("train/loss", "val/loss", "val/top1", "val/top5", "lr", "throughput/images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [0, 1], key

    with using_store(uri):  # not mlflow.set_tracking_uri: it leaks MLFLOW_TRACKING_URI into later tests
        model = mlflow.pyfunc.load_model("models:/alexnet-demo/1")  # what an MLflow user loads (README)
    assert model.predict(np.zeros((3, 3, 64, 64), dtype=np.uint8)).shape == (3, 6)


def test_second_demo_adds_a_new_run_and_keeps_the_first(demo_workdir, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{demo_workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("alexnet-demo")
    first = client.search_runs([exp.experiment_id])[0]
    first_artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    shards_before = sorted((demo_workdir / "datasets" / "hue-shapes-20" / "train").iterdir())

    assert main(["demo", "--workdir", str(demo_workdir), "--images-per-class", "20", "--epochs", "1",
                 "--set", "optim.batch_size=16", "--set", "model.hidden=256"]) == 0
    out = capsys.readouterr().out
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    second = next(r for r in runs if r.info.run_id != first.info.run_id)
    assert second.info.run_name != first.info.run_name
    assert f"MLflow run id:      {second.info.run_id}" in out
    assert f"ui --workdir {demo_workdir}" in out.split("open the MLflow UI: ")[1]  # works outside the venv too
    assert re.search(r"^best epoch:\s+1 of 1, val top-1 [0-9.]+ \(chance 0.167\)$", out, re.M), out
    # Nothing the first run points to was overwritten or removed.
    assert {a.path for a in client.list_artifacts(first.info.run_id)} == first_artifacts
    assert sorted((demo_workdir / "datasets" / "hue-shapes-20" / "train").iterdir()) == shards_before  # no new shards
    assert sorted(int(v.version) for v in client.search_model_versions("name='alexnet-demo'")) == [1, 2]


def test_readmes_own_images_steps_after_the_demo_train_the_model_predict_uses(demo_root, monkeypatch, capsys):
    """README's walk-through, its commands read from README itself, run in the folder where the
    demo ran, each with its defaults (`ui` is a server: tests/jobs/test_ui.py). The demo's model
    (6 shape classes, its own folder and name) must not answer for the user's; then docs/
    tracking.md's load snippet, with its path made this one, loads the user's champion."""
    from alexnet.demo import write_demo_images
    from tests.support.docs import ROOT, code_blocks, readme_steps

    monkeypatch.chdir(demo_root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    photos = write_demo_images(demo_root / "photos", per_class=16, size=80, seed=5, classes=("circle", "cross", "square"))
    for old, new in (("circle", "cat"), ("cross", "dog"), ("square", "fox")):
        (photos / old).rename(photos / new)
    outputs = {}
    for argv in readme_steps():
        if argv[0] != "ui":
            capsys.readouterr()
            assert main(argv) == 0, argv
            outputs[argv[0]] = capsys.readouterr().out
    assert "model alexnet v1: champion (no champion yet)" in outputs["train"], outputs["train"]
    assert "preds: 48 predictions from models:/alexnet@champion" in outputs["predict"]
    assert set(pq.read_table(demo_root / "preds").column("pred_name").to_pylist()) <= {"cat", "dog", "fox"}
    assert (demo_root / "alexnet-work" / "mlflow.db").is_file() and (demo_root / "alexnet-demo" / "mlflow.db").is_file()

    snippet = next(b for b in code_blocks(ROOT / "docs" / "tracking.md", "python") if "load_model" in b)
    scope = {}
    store = demo_root / "alexnet-work"
    with using_store(f"sqlite:///{store / 'mlflow.db'}"):  # restores the process's store after the snippet's own
        exec(snippet.replace("/abs/path/alexnet-work", str(store)), scope)
    assert scope["model"].predict(np.zeros((2, 3, 64, 64), dtype=np.uint8)).shape == (2, 3)
    assert list(scope["net"].classes) == ["cat", "dog", "fox"]


def _processes_marked(mark: str) -> set[int]:
    """The live processes whose environment carries `mark`: the command's own Ray (GCS, raylet,
    workers inherit its environment), not another Ray that shares this machine."""
    import psutil

    found = set()
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("ALEXNET_TEST_MARK") == mark:
                found.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.fault("Ctrl-C (SIGINT) to `alexnet demo` mid-training", inputs=1,
                   outcome="exit 130 within 90 s; no Ray process left behind")
def test_ctrl_c_stops_ray_cleanly(tmp_path):
    mark = f"ctrl-c-{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALEXNET_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "demo", "--workdir", str(tmp_path),
                             "--images-per-class", "10", "--epochs", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 180
    for line in proc.stdout:  # wait until training is under way
        if "resolved config" in line or time.time() > deadline:
            break
    time.sleep(8)
    assert len(_processes_marked(mark)) > 2, "its Ray was not running"  # the check below can fail
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("alexnet demo did not exit within 90 s of Ctrl-C")
    assert proc.returncode == 130, rest[-3000:]
    time.sleep(3)
    leftovers = _processes_marked(mark)
    assert not leftovers, f"Ray processes left behind after Ctrl-C: {leftovers}"
