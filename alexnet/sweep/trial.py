"""One trial of a sweep: the real training run (alexnet.train.fit) with the trial's sampled values,
as a child MLflow run of the sweep's run. Runs in Ray Tune's trial actor, which only drives Ray
Train (Ray's Train V2 + Tune pattern): the workers, the data pipeline, the checkpoints and the
worker-failure recovery are those of `alexnet train`.

The trial never gives its MLflow run a final status: a trial that ASHA stops is ended by Tune
mid-epoch, so the sweep's driver (alexnet.sweep.view) ends every child run, from what Tune saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from alexnet.config import Config
from alexnet.run import record_origin, source_tags
from alexnet.sweep.space import apply
from alexnet.track.tracking import find_run, client_for, open_run, set_tags
from alexnet.train.fit import check_inputs, fit, resume_point
from pipelines.errors import first_line
from pipelines.read.loader import train_preset

TIME_ATTR = "epochs_done"  # ASHA's clock: epochs finished, 1-based, the same after a resume
METRIC = "val_top1"  # what ASHA compares at each rung and the sweep ranks by (higher is better)


@dataclass(frozen=True)
class SweepPlan:
    """What every trial shares, built once by the sweep's driver and pickled to the trial actors."""
    name: str  # the sweep's name: its MLflow parent run and its folder under storage
    base: Config  # recipe + --set, data.path set; a trial's sampled values go on top
    storage: str  # where the trials' checkpoints go (Ray Train's storage path)
    tracking_uri: str
    experiment: str
    artifact_location: str | None
    parent_run_id: str
    share: dict  # the resources one trial may use ({"CPU": n, "GPU": m}): the cluster's over --max-concurrent
    source: str = "alexnet tune"
    tags: tuple = ()  # (key, value) pairs every child run carries (trigger, job id)


def trial_run_name(sweep: str, trial_id: str) -> str:
    """The trial's Ray Train run name and MLflow run name (one name, as for `alexnet train`)."""
    return f"{sweep}-{trial_id}"


class TrialReport(TuneReportCallback):
    """Each epoch's report to Ray Tune, from Ray Train's controller, with ASHA's clock added."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = dict(metrics[0])
        report[TIME_ATTR] = int(report["epoch"]) + 1
        super().after_report(run_context, [report], checkpoint)


def run_trial(params: dict, plan: SweepPlan) -> None:
    """Ray Tune's trainable: `params` is the trial's draw from the space ({"optim.lr": 0.003, ...})."""
    train_trial(plan, params, ray.tune.get_context().get_trial_id(), callbacks=(TrialReport(),))


def train_trial(plan: SweepPlan, params: dict, trial_id: str, callbacks: tuple = ()) -> None:
    """One trial's training run and its child MLflow run; `callbacks` report its epochs (to Tune)."""
    cfg = apply(plan.base, params)
    info = check_inputs(cfg)
    run_name = trial_run_name(plan.name, trial_id)
    # A resumed sweep restarts an unfinished trial: it continues from its own checkpoints.
    resume = resume_point(cfg, plan.storage, run_name, None, num_classes=info.num_classes)
    tags = {**dict(plan.tags), "mlflow.parentRunId": plan.parent_run_id, "sweep.name": plan.name,
            "sweep.trial_id": trial_id, "ray.run_name": run_name, **source_tags(plan.source, job="ray.job_submission_id" in dict(plan.tags))}
    run_id, _ = open_run(plan.tracking_uri, experiment=plan.experiment, run_name=run_name, tags=tags,
                         artifact_location=plan.artifact_location)
    try:
        record_origin(plan.tracking_uri, run_id, cfg, info)
        fit(cfg, info, train_preset(info, **cfg.data.augmentation), run_name=run_name, storage=plan.storage,
            tracking_uri=plan.tracking_uri, run_id=run_id, resume=resume, share=plan.share, callbacks=callbacks)
    except Exception as err:
        try:
            set_tags(plan.tracking_uri, run_id, {"sweep.error": first_line(err)[:500]})
        except Exception:  # the store is down: Tune keeps the error, the driver prints it
            pass
        raise


def child_run_id(plan: SweepPlan, trial_id: str) -> str | None:
    """The MLflow run of a trial, or None if the trial never got to open it."""
    client = client_for(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.experiment)
    run = find_run(client, experiment.experiment_id, trial_run_name(plan.name, trial_id)) if experiment else None
    return run.info.run_id if run else None
