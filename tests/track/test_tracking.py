"""Tracking: params are safe to log, runs always end and resume by name, an outage of a real
`mlflow server` does not lose metrics, and a real training run's MLflow story (http and sqlite)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alexnet.track.tracking import MAX_PARAM_LENGTH, MetricLogger, flatten_params, is_local_store, tracked_run
from pipelines.redaction import redact
from alexnet.run import check_tracking_store
from pipelines.errors import UserError
from tests.support import free_port
from tests.support.mlflow_server import RUN_ARTIFACTS, artifacts
from tests.support.mlflow_server import MlflowServer, train_args, train_cli


PASSWORD = "hunter2-tracking-pw"


def client(uri: str) -> MlflowClient:
    return MlflowClient(uri, registry_uri=uri)


@pytest.mark.fault("credentials and an over-long value in params", inputs=5,
                   outcome="secrets masked; the long value cut to MLflow's limit with its length")
def test_secrets_are_redacted_and_long_values_cut():
    flat = flatten_params({"data": {"path": "s3://ak:sk@bucket/x", "token": "abc"}, "db_password": "pw",
                           "note": "x" * (MAX_PARAM_LENGTH + 50), "uri": "http://u:p@host:5000/a"})
    assert flat["data.path"] == "s3://***@bucket/x" and flat["data.token"] == "***"
    assert flat["db_password"] == "***" and flat["uri"] == "http://***@host:5000/a"
    assert len(flat["note"]) <= MAX_PARAM_LENGTH and flat["note"].endswith(f"[{MAX_PARAM_LENGTH + 50} chars]")
    assert redact("plain", "run.name") == "plain"


@pytest.mark.fault("a sqlite store with a 3-node cluster", inputs=1,
                   outcome="UserError naming the node count and --tracking-uri http")
def test_local_store_with_a_multi_node_cluster_is_a_user_error():
    assert is_local_store("sqlite:////w/mlflow.db") and is_local_store("file:///w/mlruns") and is_local_store("mlruns")
    assert not is_local_store("http://mlflow:5000")
    check_tracking_store("sqlite:////w/mlflow.db", nodes=1)
    check_tracking_store("https://mlflow.example", nodes=4)
    with pytest.raises(UserError, match="local file store.*3 nodes.*--tracking-uri http"):
        check_tracking_store("sqlite:////w/mlflow.db", nodes=3)


@pytest.mark.fault("a crash and a Ctrl-C inside a tracked run", inputs=2,
                   outcome="the runs end FAILED and KILLED, not RUNNING; the crashed run name resumes the "
                           "same run")
def test_tracked_run_ends_failed_or_killed_and_resumes_by_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError):
        with tracked_run(uri, experiment="e", run_name="crashy") as crashed:
            raise ValueError("boom")
    assert client(uri).get_run(crashed).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(uri, experiment="e", run_name="stopped") as stopped:
            raise KeyboardInterrupt
    assert client(uri).get_run(stopped).info.status == "KILLED"
    with tracked_run(uri, experiment="e", run_name="crashy", tags={"trigger": "manual"}) as again:
        assert client(uri).get_run(again).info.status == "RUNNING"
    assert again == crashed
    run = client(uri).get_run(again)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    exp = client(uri).get_experiment_by_name("e")
    assert len(client(uri).search_runs([exp.experiment_id])) == 2


@pytest.mark.fault("a tracking server that does not answer at start", inputs=1,
                   outcome="TrackingUnavailable 'did not answer' before the run body")
def test_unreachable_tracking_server_fails_clearly_before_training(monkeypatch):
    from alexnet.track.tracking import TrackingUnavailable

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(TrackingUnavailable, match="did not answer"):
        with tracked_run(f"http://127.0.0.1:{free_port()}", experiment="e", run_name="r"):
            pass


@pytest.mark.fault("the tracking server stopped mid-run, then restarted", inputs=1,
                   outcome="training goes on with one line; every metric of every step back-filled once")
@pytest.mark.slow
def test_metrics_survive_a_server_outage_and_are_backfilled(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what jobs.runtime sets, stricter
    # A stopped server refuses at once; the timeout only bounds a restarted server's first, slow answers.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    server = MlflowServer(tmp_path / "server").start()
    try:
        c = client(server.uri)
        run_id = c.create_run(c.create_experiment("outage")).info.run_id
        logger = MetricLogger(server.uri, run_id)
        assert logger.log({"train/loss": 2.0, "val/top1": 0.1}, step=0)
        server.stop()
        assert not logger.log({"train/loss": 1.5, "val/top1": 0.2}, step=1)
        assert not logger.log({"train/loss": 1.2, "val/top1": 0.3}, step=2)
        err = capsys.readouterr().err
        assert err.count("MLflow unreachable") == 1 and "training continues" in err
        server.start()  # same port, same sqlite backend
        assert logger.log({"train/loss": 1.0, "val/top1": 0.4}, step=3)
        assert "back-filled" in capsys.readouterr().err and not logger.pending
        for key, values in {"train/loss": [2.0, 1.5, 1.2, 1.0], "val/top1": [0.1, 0.2, 0.3, 0.4]}.items():
            history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
            assert history == list(enumerate(values)), key
    finally:
        server.stop()


EPOCH_METRICS = ("train/loss", "val/loss", "val/top1", "val/top5", "lr", "throughput/images_per_s",
                 "throughput/data_wait_fraction")


def assert_tracked_run(uri: str, run_id: str, dataset, epochs: int, version: str) -> None:
    """What a user sees in MLflow after `alexnet train`: params, per-epoch metrics, artifacts,
    a registered version that loads and predicts."""
    import numpy as np
    import torch

    from alexnet.track.models import load_model
    from alexnet.track.provenance import git_commit
    from pipelines.dataset import open_dataset

    c = client(uri)
    run = c.get_run(run_id)
    info = open_dataset(dataset)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["dataset.version"] == info.version and params["dataset.num_classes"] == "6"
    assert params["model.arch"] == "torchvision" and params["run.num_workers"] == "1"
    assert params["data.path"] == str(dataset) and params["cluster.gpus"] == "0"
    assert {"version.torch", "version.ray", "version.mlflow", "optim.lr", "data.crop"} <= set(params)
    assert run.data.tags["trigger"] == "manual" and run.data.tags["ray.run_name"] == run.info.run_name
    # "trained on what, by which code": the dataset as the run's input, MLflow's source tags
    (dataset_input,) = run.inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == (Path(dataset).name, info.version)
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == info.num_images
    assert run.data.tags["mlflow.source.name"] == "alexnet train" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags.get("mlflow.source.git.commit") == git_commit()
    for key in EPOCH_METRICS:
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == list(range(epochs)), key
    assert set(RUN_ARTIFACTS) <= artifacts(c, run_id)
    mv = c.get_model_version("alexnet", version)
    assert mv.run_id == run_id and mv.tags["eval.ten_crop"] == "false" and mv.tags["dataset_version"] == info.version
    model = load_model(f"models:/alexnet/{version}", uri)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.zeros((3, 3, 64, 64), dtype=np.uint8)))
    assert logits.shape == (3, 6) and model.classes == info.classes


def report_classes(dataset) -> list[str]:
    from pipelines.dataset import open_dataset

    return open_dataset(dataset).classes


@pytest.mark.slow
def test_training_run_tracked_on_a_real_mlflow_server(ray_local, shapes_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from alexnet.config import load_config
    from alexnet.track.models import load_model
    from alexnet.run import run_training

    server = MlflowServer(tmp_path / "server").start()
    try:
        cfg = load_config("smoke", [f"data.path={shapes_dataset}", "optim.epochs=1", "optim.batch_size=16",
                                    "run.system_metrics=true", "run.system_metrics_interval=1"])
        report = run_training(cfg, tracking_uri=server.uri, storage=str(tmp_path / "runs"), run_name="http-run",
                              model_dir=tmp_path / "models", tags={"token": "s3cr3t"})
        assert report.alias == "champion" and report.registered == "models:/alexnet/1"
        assert_tracked_run(server.uri, report.run_id, shapes_dataset, epochs=1, version="1")
        assert str(client(server.uri).get_model_version_by_alias("alexnet", "champion").version) == "1"
        assert load_model("models:/alexnet@champion", server.uri).classes == report_classes(shapes_dataset)
        run = client(server.uri).get_run(report.run_id)
        assert run.data.tags["token"] == "***"
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
        assert "MLFLOW_TRACKING_URI" not in os.environ  # the driver did not leave its store behind
    finally:
        server.stop()


@pytest.mark.slow
def test_sqlite_run_is_tracked_and_rerunning_its_name_continues_the_same_run(ray_local, shapes_dataset,
                                                                            tmp_path, capsys):
    """Its own run (the session's shared trained run stays as trained): 1 epoch, then the same run
    name with one more."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train_cli(train_args(shapes_dataset, tmp_path, "rerun", "--set", "optim.epochs=1")) == 0
    c = client(uri)
    exp = c.get_experiment_by_name("alexnet")
    run_id = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'rerun'")[0].info.run_id
    capsys.readouterr()
    assert_tracked_run(uri, run_id, shapes_dataset, epochs=1, version="1")
    # Same run name, one more epoch: Ray resumes the checkpoints, MLflow the run.
    assert train_cli(train_args(shapes_dataset, tmp_path, "rerun", "--set", "optim.epochs=2")) == 0
    assert f"MLflow run id: {run_id}" in capsys.readouterr().out
    assert len(c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'rerun'")) == 1
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    assert run.data.tags["resumed_from_epoch"] == "0"  # Ray resumed its epoch-0 checkpoint
    assert run.data.params["optim.epochs"] == "1"  # MLflow params are immutable: the first value stays
    for key in EPOCH_METRICS:
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == [0, 1], key


def test_source_tags_name_the_command_and_the_commit_a_submitted_job_was_given(monkeypatch):
    from alexnet.run import source_tags

    monkeypatch.setenv("ALEXNET_GIT_COMMIT", "0123abc")  # set by `alexnet submit`: the job's upload has no .git
    assert source_tags("alexnet train", job=True) == {"mlflow.source.name": "alexnet train",
                                                      "mlflow.source.type": "JOB", "mlflow.source.git.commit": "0123abc"}
    assert source_tags("alexnet demo", job=False)["mlflow.source.type"] == "LOCAL"


@pytest.mark.fault("another service and the tracking server not answering", inputs=2,
                   outcome="only MLflow's outage is blamed on the store")
def test_only_errors_that_come_through_mlflow_are_blamed_on_the_tracking_store(monkeypatch):
    """A Ray job server or any other service that does not answer is not "MLflow did not answer"."""
    import requests

    from alexnet.track.tracking import explain, problem

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(requests.ConnectionError) as elsewhere:
        requests.get(f"http://127.0.0.1:{free_port()}", timeout=5)
    assert problem(elsewhere.value) is None
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as tracking:
        client(uri).get_experiment_by_name("e")
    assert problem(tracking.value) == "outage" and "start the tracking server" in explain(tracking.value, uri)


@pytest.mark.fault("tracking URI with a password, store down: metric writes and the run's final status fail", inputs=2,
                   outcome="both lines printed name the failure with the password masked; the metrics are kept")
def test_errors_about_a_store_whose_uri_holds_a_password_never_print_it(monkeypatch, capsys):
    """MLflow's own error text repeats the request URL, credentials included."""
    from alexnet.track.tracking import finish_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    lines = []
    logger = MetricLogger(uri, "0" * 32, say=lines.append)
    assert not logger.log({"train/loss": 1.0}, step=0) and len(logger.pending) == 1
    assert not finish_run(uri, "0" * 32, "FINISHED", retry=False)
    printed = "\n".join(lines) + capsys.readouterr().err
    assert "MLflow unreachable" in printed and "could not mark MLflow run" in printed
    assert "127.0.0.1" in printed and PASSWORD not in printed and "alice" not in printed
