"""Training end to end with real Ray workers: checkpoints, resume, divergence, killed processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from alexnet.train import checkpoint
from alexnet.config import load_config
from pipelines.read.loader import train_preset
from alexnet.train.fit import TrainingError, check_inputs, fit, resume_point
from pipelines.errors import UserError
from tests.support import wait_for

pytestmark = pytest.mark.slow

TINY = ["optim.batch_size=16", "run.keep_checkpoints=1"]


def _mlflow_run(tmp_path: Path) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    exp_id = exp.experiment_id if exp is not None else client.create_experiment("t")
    return uri, client.create_run(exp_id).info.run_id


def _fit(shapes_dataset, tmp_path, run_name, *overrides, resume_from=None, mlflow=None):
    """As alexnet.run drives fit: inputs checked, the resume point found, the preset built once."""
    cfg = load_config("smoke", [f"data.path={shapes_dataset}", *TINY, *overrides])
    uri, run_id = mlflow or _mlflow_run(tmp_path)
    info, storage = check_inputs(cfg), str(tmp_path / "runs")
    resume = resume_point(cfg, storage, run_name, resume_from, num_classes=info.num_classes)
    return fit(cfg, info, train_preset(info, **cfg.data.augmentation), run_name=run_name, storage=storage,
               tracking_uri=uri, run_id=run_id, resume=resume)


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if (p / checkpoint.META_FILE).is_file())


@pytest.mark.fault("a diverging run (lr 1e38) resuming a run; a resume with another optimiser or "
                   "architecture", inputs=3,
                   outcome="TrainingError naming epoch and step, the last good checkpoint intact and finite;"
                           " the other shapes refused before Ray")
@pytest.mark.fault("an epoch logged by an attempt that died before its checkpoint counted, and a checkpointed "
                   "epoch whose metrics never reached MLflow", inputs=2,
                   outcome="the resumed run has exactly one point per epoch: the earlier attempt's kept, the "
                           "missing one logged from its checkpoint")
def test_two_workers_checkpoint_then_a_resume_logs_each_epoch_once_and_nan_stops_it(shapes_dataset, tmp_path):
    """One run's story in three fits (each a whole Ray Train run, ~15 s of start-up here): two
    workers checkpoint epoch 0; one worker resumes it into an MLflow run that never got epoch 0
    (held through an outage when the driver died) and where an earlier attempt logged epoch 1 and
    died before its checkpoint; then a diverging resume."""
    from mlflow.tracking import MlflowClient

    first = _fit(shapes_dataset, tmp_path, "r", "run.num_workers=2", "optim.epochs=1")
    assert first.epochs == 1 and first.resumed_from_epoch is None
    state = checkpoint.load(first.latest_checkpoint)
    assert {"model", "optimizer", "plateau", "epoch", "config", "dataset_version"} <= set(state)
    assert state["config"]["run"]["num_workers"] == 2 and state["epoch"] == 0
    epoch0 = checkpoint.read_meta(first.latest_checkpoint)["metrics"]["val_top1"]

    uri, run_id = _mlflow_run(tmp_path)
    client = MlflowClient(uri)
    client.log_metric(run_id, "val/top1", 0.125, step=1)
    again = _fit(shapes_dataset, tmp_path, "r", "run.num_workers=1", "optim.epochs=3", mlflow=(uri, run_id))
    assert again.resumed_from_epoch == 0 and again.epochs == 3  # continued at epoch 1, not 0
    kept = _checkpoints(tmp_path / "runs" / "r")
    assert 1 <= len(kept) <= 2  # best 1 by val top-1, plus the latest
    assert checkpoint.read_meta(again.latest_checkpoint)["epoch"] == 2
    # One point per epoch: epoch 0 from its checkpoint, the earlier attempt's epoch 1 kept, epoch 2 logged.
    points = {m.step: m.value for m in client.get_metric_history(run_id, "val/top1")}
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/top1")) == [0, 1, 2]
    assert points[0] == epoch0 and points[1] == 0.125
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [0, 2]

    with pytest.raises(TrainingError, match=r"diverged: .*NaN or inf at epoch 3, step \d+"):
        _fit(shapes_dataset, tmp_path, "r", "optim.epochs=4", "optim.lr=1e38")
    assert checkpoint.find_latest(str(tmp_path / "runs"), "r")[1] == 2  # the last good one, intact
    good = checkpoint.load(again.latest_checkpoint)
    assert all(t.isfinite().all() for t in good["model"].values())

    # Another optimiser cannot take over this run's optimiser state: refused before Ray is asked.
    with pytest.raises(UserError, match=r"optim.optimizer: checkpoint adamw, this run sgd.*another --run-name"):
        _fit(shapes_dataset, tmp_path, "r", "optim.epochs=4", "optim.optimizer=sgd")
    with pytest.raises(UserError, match=r"model.arch: checkpoint torchvision, this run bn"):
        _fit(shapes_dataset, tmp_path, "fresh", "model.arch=bn", resume_from=again.latest_checkpoint)


def _train_worker_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "RayTrainWorker" in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            pids.append(proc.pid)
    return pids


@pytest.mark.fault("SIGKILL of a train worker after the first checkpoint", inputs=1,
                   outcome="the run restarts from the checkpoint, not from scratch (epoch 0 logged once), "
                           "and finishes all 10 epochs")
def test_a_killed_train_worker_restarts_from_the_last_checkpoint(shapes_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    mlflow = _mlflow_run(tmp_path)
    box = {}
    thread = threading.Thread(target=lambda: box.update(out=_fit(
        shapes_dataset, tmp_path, "ft", "optim.epochs=10", "run.max_failures=1", mlflow=mlflow)))  # ~0.4 s each
    thread.start()
    wait_for(lambda: checkpoint.find_latest(str(tmp_path / "runs"), "ft"), 300, "the first complete checkpoint")
    victims = wait_for(_train_worker_pids, 60, "a RayTrainWorker process")
    os.kill(victims[0], signal.SIGKILL)
    thread.join(600)
    assert not thread.is_alive() and "out" in box
    assert box["out"].epochs == 10
    history = MlflowClient(mlflow[0]).get_metric_history(mlflow[1], "val/top1")
    steps = sorted(m.step for m in history)
    assert steps == list(range(10))  # restarted from a checkpoint, not from scratch; one point per epoch


@pytest.mark.fault("SIGKILL of the `alexnet train` driver after a checkpoint; the same command rerun", inputs=1,
                   outcome="the rerun resumes at the next epoch and finishes; its output shows the project's"
                           " lines, no Ray internals")
def test_a_killed_driver_rerun_with_the_same_run_name_continues_at_the_next_epoch(shapes_dataset, tmp_path):
    work, epochs = tmp_path / "work", 8  # epochs of ~0.4 s: the old workers may checkpoint a few after the kill
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(work),
           "--run-name", "X", *[a for o in TINY + [f"optim.epochs={epochs}"] for a in ("--set", o)]]
    env = dict(os.environ)  # token auth on, with the session's token (tests/conftest.py)
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: checkpoint.find_latest(str(work / "runs"), "X") or driver.poll() is not None, 300,
                  "a complete checkpoint")
        assert driver.poll() is None, "the first run ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    done = checkpoint.find_latest(str(work / "runs"), "X")[1]
    assert done < epochs - 1
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The killed driver's workers may still finish the checkpoint they were writing as Ray stops
    # them: the rerun resumes from the latest one there is, at least the one seen at the kill.
    resumed = re.search(rf"^resuming run X at epoch (\d)/{epochs}, from its checkpoint of epoch (\d)", rerun.stdout, re.M)
    assert resumed, rerun.stdout
    last = int(resumed.group(2))  # 1-based
    assert done + 1 <= last < epochs and int(resumed.group(1)) == last + 1, rerun.stdout
    # What a user sees: the project's own line per epoch, the best epoch named, no Ray internals.
    lines = [line for line in rerun.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == [f"{k}/{epochs}" for k in range(last + 1, epochs + 1)], rerun.stdout
    assert all(" top-1 " in line and " img/s " in line and "data wait" in line for line in lines)
    assert re.search(rf"^best epoch: \d of {epochs}, val top-1 ", rerun.stdout, re.M), rerun.stdout
    shown = rerun.stdout + rerun.stderr
    for internal in ("SplitCoordinator", "Starting execution", "TrainingReport", "(RayTrainWorker", "pid=",
                     "streaming_executor", "INFO worker.py"):
        assert internal not in shown, f"{internal!r} reached the terminal:\n{shown[-3000:]}"
    assert len(shown.strip().splitlines()) < 40, shown


def test_a_checkpoint_tells_its_shape_and_one_without_it_is_not_resumed(tmp_path):
    """meta.json records what a resuming run must share; a folder whose meta.json lacks it is no
    checkpoint this project wrote, and --resume-from names it as unreadable."""
    import json

    import torch

    from alexnet.config import Config
    from alexnet.train.fit import resume_point

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    cfg = Config().to_dict()
    checkpoint.save(tmp_path, model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), plateau={},
                    epoch=4, config=cfg, dataset_version="v1", metrics={}, num_classes=3)
    meta = json.loads((tmp_path / checkpoint.META_FILE).read_text())
    assert meta["shape"] == {"model.arch": cfg["model"]["arch"], "model.hidden": cfg["model"]["hidden"],
                             "num_classes": 3, "optim.optimizer": cfg["optim"]["optimizer"]}
    assert checkpoint.mismatches(checkpoint.read_meta(tmp_path), cfg, 5) == ["num_classes: checkpoint 3, this run 5"]
    del meta["shape"]
    (tmp_path / checkpoint.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"--resume-from .*: not a readable checkpoint .*no shape entry"):
        resume_point(Config(), str(tmp_path / "runs"), "fresh", str(tmp_path), num_classes=3)
