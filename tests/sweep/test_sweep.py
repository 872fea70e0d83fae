"""`alexnet tune` end to end, as a user runs it: a 3-trial, 2-epoch sweep with real Ray Tune, Ray
Train and an MLflow store; its driver killed after two trials have ended, then `--resume`.

The data's classes differ by hue as well as shape (alexnet.demo's class_hues), so that one epoch
of 33 steps at a good learning rate is well above chance (0.56 against 0.34, 2026-12-07); the
space offers that rate and one that learns nothing (1e-7). Seed 1 draws [0.005, 1e-7, 1e-7]
(tests/sweep/test_space.py shows the draws are fixed by the seed), one trial at a time: trial 1
sets the first rung, trial 2 falls below it and ASHA stops it; trial 3 ties with trial 2, which
is not below the rung's median, and completes. Each trial is a whole Ray Train run (~15 s of
start-up here), so three are all the story needs: one ended, one stopped, one left to resume.

The sweep joins the session's Ray (RAY_ADDRESS), as a sweep does on a cluster: with a second Ray
instance on the machine, Ray Train's placement-group cleaner cannot tell which one is its own, and
a stopped trial's workers' CPUs would stay reserved (docs/tune.md).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.demo import write_demo_images
from jobs.cli import main
from tests.support import wait_for

pytestmark = pytest.mark.slow

INTERNALS = ("Trial status", "Configuration for experiment", "(raylet)", "pid=", "View detailed results",
             "TuneController", "tensorboard", "Traceback")


def _ended_trials(folder: Path) -> int:
    """Trials Tune has saved as TERMINATED in the sweep's state (what a resume will not rerun)."""
    states = sorted(glob.glob(str(folder / "experiment_state-*.json")))
    if not states:
        return 0
    try:
        data = json.loads(Path(states[-1]).read_text())
    except ValueError:  # caught mid-write (Tune writes it in place)
        return 0
    return sum(json.loads(t[0]).get("status") == "TERMINATED" for t in data["trial_data"])


@pytest.fixture(scope="module")
def hues(ray_local, tmp_path_factory) -> Path:
    """The dataset and the space: 1,082 training images of 3 classes."""
    root = tmp_path_factory.mktemp("sweep")
    src = write_demo_images(root / "src", per_class=400, seed=5, classes=("circle", "hstripes", "vstripes"),
                            sizes=(72, 96), class_hues=True)
    assert main(["ingest", str(src), str(root / "ds"), "--resize", "72", "--val-fraction", "0.1"]) == 0
    (root / "space.yaml").write_text("optim.lr: choice(0.005, 0.0000001)\n")
    return root


@pytest.fixture(scope="module")
def sweep(ray_local, hues):
    root = hues
    work, folder = root / "work", root / "work" / "runs" / "sw"
    cmd = [sys.executable, "-m", "jobs.cli", "tune", "--data", str(root / "ds"), "--recipe", "demo", "--space",
           str(root / "space.yaml"), "--trials", "3", "--max-concurrent", "1", "--seed", "1", "--workdir", str(work),
           "--name", "sw", "--set", "optim.epochs=2", "--set", "optim.warmup_epochs=0", "--set", "model.hidden=128",
           "--set", "optim.schedule=constant"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    first_log = root / "first.log"
    with first_log.open("w") as log:
        driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: _ended_trials(folder) >= 2 or driver.poll() is not None, 400, "two trials ended")
        assert driver.poll() is None, first_log.read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    trial1 = sorted(folder.glob("*_00000"))[0].name
    checkpoints = {p: p.stat().st_mtime for p in (work / "runs" / f"sw-{trial1}").rglob("*") if p.is_file()}
    time.sleep(1)
    resumed = subprocess.run([sys.executable, "-m", "jobs.cli", "tune", "--resume", str(folder), "--workdir", str(work)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    return {"work": work, "folder": folder, "first": first_log.read_text(), "resumed": resumed,
            "trial1": trial1, "checkpoints": checkpoints}


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


@pytest.mark.fault("SIGKILL of the `alexnet tune` driver after two of three trials ended; `--resume` of its folder",
                   inputs=1, outcome="the ended trials are not rerun, the others run, every MLflow run ends "
                                     "(none left RUNNING) and the best trial's model is registered")
def test_a_killed_sweep_resumes_without_rerunning_an_ended_trial(sweep):
    out = sweep["resumed"].stdout
    # What the user sees: the trial ended in this run (3), the best, the UI; no Tune tables or Ray lines.
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["3/3"], out
    assert all("optim.lr=1e-07" in line and " top-1 " in line and "/2 epochs, " in line for line in lines), out
    assert f"best trial: {sweep['trial1']}  val top-1 " in out and "optim.lr=0.005" in out
    assert "open the MLflow UI: " in out
    for internal in INTERNALS:
        assert internal not in out + sweep["resumed"].stderr, f"{internal!r} reached the terminal:\n{out}"
    # Trial 1 ended before the kill: its checkpoints are untouched, its epochs logged once.
    after = {p: p.stat().st_mtime for p in (sweep["work"] / "runs" / f"sw-{sweep['trial1']}").rglob("*") if p.is_file()}
    assert after == sweep["checkpoints"]
    client = _client(sweep["work"])
    experiment = client.get_experiment_by_name("alexnet").experiment_id
    child = client.search_runs([experiment], f"attributes.run_name = 'sw-{sweep['trial1']}'")[0]
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/top1")) == [0, 1]
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []


def test_each_trial_is_a_child_run_with_its_draw_and_stop_reason(sweep):
    client = _client(sweep["work"])
    experiment = client.get_experiment_by_name("alexnet").experiment_id
    parent = client.search_runs([experiment], "attributes.run_name = 'sw'")[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.optim.lr"] == "choice(0.005, 1e-07)"
    assert parent.data.params["sweep.seed"] == "1" and parent.data.params["sweep.search"] == "random"
    assert parent.data.params["sweep.scheduler"].startswith("asha(time_attr=epochs_done, grace_period=1")
    assert parent.data.params["optim.epochs"] == "2" and "optim.lr" not in parent.data.params
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.run_name"])
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert [c.data.params["optim.lr"] for c in children] == ["0.005", "1e-07", "1e-07"]
    reasons = [c.data.tags["sweep.stop_reason"] for c in children]
    assert reasons == ["completed", "early-stopped", "completed"]
    assert [int(c.data.tags["sweep.epochs_run"]) for c in children] == [2, 1, 2]
    assert parent.data.tags["sweep.best_trial_id"] == sweep["trial1"]
    assert parent.data.tags["sweep.best_run_id"] == children[0].info.run_id
    best = max(m.value for m in client.get_metric_history(children[0].info.run_id, "val/top1"))
    assert parent.data.metrics["best/val_top1"] == pytest.approx(best) and best > 0.5  # chance is 1/3
    table = client.download_artifacts(parent.info.run_id, "trials.csv")
    rows = list(csv.DictReader(io.StringIO(Path(table).read_text())))
    assert [r["stop_reason"] for r in rows] == reasons and [r["optim.lr"] for r in rows] == ["0.005", "1e-07", "1e-07"]


def test_the_best_trial_takes_the_registry_by_the_champion_rule(sweep):
    client = _client(sweep["work"])
    version = client.get_model_version_by_alias("alexnet", "champion")
    parent = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id], "attributes.run_name = 'sw'")[0]
    assert version.run_id == parent.data.tags["sweep.best_run_id"]
    assert parent.data.tags["sweep.registered"] == f"models:/alexnet/{version.version}"
    assert sweep["resumed"].stdout.count("model alexnet v1: champion") == 1  # said once, before the summary


@pytest.mark.fault("Ctrl-C (SIGINT) of `alexnet tune` during a trial's training", inputs=1,
                   outcome="exit 130, one line naming `--resume FOLDER`, the sweep's run and the trial's KILLED")
def test_ctrl_c_ends_the_sweep_and_its_trial_runs_killed_and_says_how_to_resume(ray_local, hues, tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "jobs.cli", "tune", "--data", str(hues / "ds"), "--recipe", "demo", "--space",
           str(hues / "space.yaml"), "--trials", "2", "--max-concurrent", "1", "--workdir", str(work), "--name", "cc",
           "--set", "optim.epochs=20", "--set", "model.hidden=128"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # The first epoch's checkpoint: the trial's child run is open and training.
        wait_for(lambda: list((work / "runs").glob("cc-*/checkpoint_*")) or driver.poll() is not None, 300,
                 "the first trial's first checkpoint")
        assert driver.poll() is None, driver.communicate()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert f"continue it with `alexnet tune --resume {work / 'runs' / 'cc'}`" in out
    client = _client(work)
    runs = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id])
    names = sorted(r.info.run_name for r in runs)  # the sweep's run and its first trial's
    assert len(names) == 2 and names[0] == "cc" and names[1].startswith("cc-"), names
    assert all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
