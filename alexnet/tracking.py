"""The one path to MLflow: the driver opens and closes the run, rank 0 logs into it.

`tracked_run` is the only place a run starts and ends, so a crash still ends it (FAILED, or
KILLED on Ctrl-C) instead of leaving it RUNNING. Workers get the run id, never start runs.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


@contextmanager
def tracked_run(tracking_uri: str, *, experiment: str, run_name: str, tags: dict | None = None,
                artifact_location: str | None = None):
    """Create a run, yield its id, and always give it a final status."""
    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(client, experiment, artifact_location)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    run_id = run.info.run_id
    try:
        yield run_id
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_params(tracking_uri: str, run_id: str, params: dict) -> None:
    """Log params in batches of 100 (MLflow's limit), values cut to MLflow's maximum length."""
    items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    client = MlflowClient(tracking_uri)
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def set_tags(tracking_uri: str, run_id: str, tags: dict) -> None:
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MetricLogger:
    """Rank 0's metric writer. A tracking outage must not kill a long training run: failed
    writes are kept and re-sent with the next call; the failure is printed once."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[Metric] = []
        self.failing = False

    def log(self, metrics: dict, step: int) -> bool:
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        try:
            for i in range(0, len(self.pending), 1000):
                self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        except Exception as err:  # any transport or server error: keep the metrics, go on training
            if not self.failing:
                print(f"[tracking] MLflow unreachable ({type(err).__name__}: {err}); "
                      f"training continues, metrics are kept and re-sent", file=sys.stderr)
            self.failing = True
            return False
        if self.failing:
            print("[tracking] MLflow reachable again; back-filled the kept metrics", file=sys.stderr)
        self.pending, self.failing = [], False
        return True
