"""The train loop's input: one typed object the driver builds and Ray pickles to every worker."""

from __future__ import annotations

import dataclasses

import pytest
import ray.cloudpickle

from alexnet.config import Config, load_config
from alexnet.train.loop import LoopInputs


def test_loop_inputs_travel_to_a_worker_as_the_typed_config():
    cfg = load_config("smoke", ["model.hidden=256", "optim.epochs=3"])
    inputs = LoopInputs(config=cfg, dataset_version="v1", num_classes=3, pixel_mean=(0.5, 0.4, 0.3),
                        pixel_std=(0.2, 0.2, 0.2), tracking_uri="sqlite:///mlflow.db", run_id="abc", run_name="r",
                        storage="/tmp/runs", start=None, steps_per_epoch=7)
    got = ray.cloudpickle.loads(ray.cloudpickle.dumps({"inputs": inputs}))["inputs"]
    assert got == inputs and isinstance(got.config, Config)
    assert (got.config.model.hidden, got.config.optim.epochs) == (256, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.steps_per_epoch = 8


def test_an_epochs_report_maps_back_to_its_mlflow_metrics():
    from alexnet.train.loop import METRIC_NAMES, epoch_metrics, from_report

    sums = {"loss_sum": 8.0, "images": 4.0, "top1": 2.0, "top5": 4.0, "seconds": 2.0, "data_wait_s": 0.5}
    metrics = epoch_metrics(3, 0.01, sums, sums, wall_s=2.5, world=1)
    assert set(metrics) - {"epoch"} == set(METRIC_NAMES)
    report = {k.replace("/", "_"): v for k, v in metrics.items()}
    assert from_report(report) == {k: v for k, v in metrics.items() if k != "epoch"}


def test_a_run_starts_with_a_short_controller_poll_unless_the_user_set_one(monkeypatch):
    """Ray Train's controller takes a report only when it polls (every 2 s by default) and the
    worker waits for it: fit() asks for CONTROLLER_POLL_S, through the variable Ray copies from
    the driver to the run's controller; a user's own value wins, and nothing is left set."""
    import os

    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from alexnet.train.fit import CONTROLLER_POLL_S, POLL_VAR, _controller_poll

    monkeypatch.delenv(POLL_VAR, raising=False)
    with _controller_poll(CONTROLLER_POLL_S):
        assert float(get_env_vars_to_propagate()[POLL_VAR]) == CONTROLLER_POLL_S < 2.0
    assert POLL_VAR not in os.environ
    monkeypatch.setenv(POLL_VAR, "5")
    with _controller_poll(CONTROLLER_POLL_S):
        assert get_env_vars_to_propagate()[POLL_VAR] == "5"
    assert os.environ[POLL_VAR] == "5"
