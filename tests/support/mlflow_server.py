"""Shared by the MLflow tests: one small training run per session, and a real `mlflow server`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import free_port

_TRAINED: dict = {}


def wait_http(url: str, timeout: float = 240.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1: sqlite backend and served artifacts under `root`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # as `alexnet ui` (jobs/commands/ui.py)
        try:
            wait_http(self.uri + "/health", proc=self.proc)
        except BaseException:
            self.stop()  # a server that never answered is not left running
            raise
        return self

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def train_cli(argv: list[str]) -> int:
    """`alexnet train ...` as a user runs it: without an MLFLOW_TRACKING_URI that an earlier test
    in this process left behind (mlflow.set_tracking_uri writes it)."""
    import os

    from jobs.cli import main

    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if k in os.environ}
    try:
        return main(argv)
    finally:
        os.environ.update(saved)


def train_args(dataset: Path, workdir: Path, run_name: str, *extra: str) -> list[str]:
    return ["train", "--recipe", "smoke", "--data", str(dataset), "--workdir", str(workdir), "--run-name", run_name,
            "--set", "optim.epochs=2", "--set", "optim.batch_size=16", *extra]


def trained_sqlite(tmp_path_factory, dataset: Path) -> dict:
    """One `alexnet train` (smoke recipe, 2 epochs) into a work directory's SQLite store, once per session."""
    if "sqlite" not in _TRAINED:
        from mlflow.tracking import MlflowClient

        work = tmp_path_factory.mktemp("trained")
        assert train_cli(train_args(dataset, work, "first-run")) == 0
        uri = f"sqlite:///{work / 'mlflow.db'}"
        client = MlflowClient(uri, registry_uri=uri)
        exp = client.get_experiment_by_name("alexnet")
        run = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'first-run'")[0]
        _TRAINED["sqlite"] = {"workdir": work, "uri": uri, "run_id": run.info.run_id, "dataset": dataset}
    return _TRAINED["sqlite"]


# What a training run logs as artifacts.
RUN_ARTIFACTS = ("config.yaml", "class_index.json", "eval/confusion_matrix.png", "eval/per_class_accuracy.csv",
                 "samples/train_augmented.png")


def artifacts(c, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact path of an MLflow run."""
    found = set()
    for a in c.list_artifacts(run_id, path):
        found |= artifacts(c, run_id, a.path) if a.is_dir else {a.path}
    return found
