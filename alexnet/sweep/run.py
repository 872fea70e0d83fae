"""One sweep, tracked and registered: what `alexnet tune` does, in one call.

    check the recipe, the space and the dataset (no Ray yet) -> start Ray (the caller's session)
    -> open the sweep's MLflow run -> Ray Tune runs the trials (alexnet.sweep.trial: each the real
    training run, a child MLflow run), ASHA stopping the weak ones at each rung of epochs ->
    record every trial on the sweep's run -> the best trial's model through the champion rule
    (alexnet.run.after_training, as `alexnet train` registers) -> close the run

The sweep's folder under the storage (STORAGE/NAME) holds Tune's state and `sweep.json`, what the
sweep was asked: `--resume FOLDER` continues it, without rerunning a finished trial.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from alexnet.config import Config, flatten, from_dict, to_yaml
from alexnet.run import after_training, alive_nodes, check_register_as, check_tracking_store
from alexnet.sweep.space import Space, apply, check_space, describe, parse_space, to_tune
from alexnet.sweep.trial import METRIC, TIME_ATTR, SweepPlan, child_run_id, run_trial, trial_run_name
from alexnet.sweep.view import (COMPLETED, EARLY_STOPPED, FAILED, SweepView, TrialSummary, end_child_run,
                                end_running_children, error_line, summarize)
from alexnet.track.tracking import client_for, log_params, set_tags, tracked_run
from alexnet.train import checkpoint
from alexnet.train.fit import Outcome, check_batches, check_inputs, plan_placement
from pipelines import storage as store
from pipelines.atomic import write_atomic
from pipelines.dataset import DatasetInfo
from pipelines.errors import UserError
from pipelines.read.loader import train_preset
from pipelines.redaction import carries_credentials, redact
from pipelines.shared_folder import check_shared, check_storage

SWEEP_FILE = "sweep.json"  # in the sweep's folder: what it was asked, for --resume
SCHEDULERS = ("asha", "none")
# ASHA's rungs: a trial runs GRACE_EPOCHS, then continues past each rung only if its val top-1 is
# in the best 1/REDUCTION_FACTOR of the trials that reached that rung so far.
GRACE_EPOCHS = 1
REDUCTION_FACTOR = 2
TRIAL_DRIVER_CPU = 0.01
CPUS_PER_CPU_TRIAL = 4  # on a cluster without GPUs, --max-concurrent's default: one trial per 4 CPUs


@dataclass(frozen=True)
class SweepOptions:
    trials: int = 8  # trials drawn from the space
    scheduler: str = "asha"  # one of SCHEDULERS
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster holds (default_concurrency)
    seed: int = 0  # the search's random state: the same seed draws the same trials


@dataclass(frozen=True)
class SweepResult:
    name: str
    run_id: str  # the sweep's MLflow run
    trials: list  # TrialSummary, in trial order
    best: TrialSummary | None
    best_run_id: str
    registered: str  # models:/NAME/VERSION or ""
    alias: str = ""
    decision: str = ""


def sweep_folder(storage: str, name: str) -> str:
    return store.locate(storage).join(name).uri


def check_options(options: SweepOptions) -> None:
    if options.trials < 1:
        raise UserError(f"--trials {options.trials}: needs at least 1 trial")
    if options.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {options.scheduler}: supported schedulers are {', '.join(SCHEDULERS)}")
    if options.max_concurrent < 0:
        raise UserError(f"--max-concurrent {options.max_concurrent}: must be >= 1 (0 = as many as the cluster holds)")


def default_concurrency(cfg: Config, cluster: dict) -> int:
    """Trials at once when --max-concurrent is not given: as many as the GPUs hold (run.num_workers
    each), or one per CPUS_PER_CPU_TRIAL CPUs on a cluster without GPUs."""
    gpus = int(cluster.get("GPU", 0))
    if gpus and cfg.run.use_gpu != "false":
        return max(1, gpus // cfg.run.num_workers)
    return max(1, int(cluster.get("CPU", 0)) // CPUS_PER_CPU_TRIAL)


def trial_share(cluster: dict, concurrent: int) -> dict:
    """The resources each of `concurrent` trials may use: an equal part of the cluster's."""
    return {"CPU": cluster.get("CPU", 0) / concurrent - TRIAL_DRIVER_CPU, "GPU": cluster.get("GPU", 0) / concurrent}


def check_sweep(base: Config, space: Space, info: DatasetInfo, where: str, share: dict | None = None) -> None:
    """Every value the space can draw gives a run that starts: the config's own checks, the
    batch arithmetic against the dataset, and (with Ray up) the placement within a trial's share."""
    def check(cfg: Config) -> None:
        check_batches(cfg, info)
        if share is not None:
            plan_placement(cfg, share)
    check(base)
    check_space(space, base, where, check)


def check_tracking_uri(tracking_uri: str) -> None:
    """Ray Tune pickles each trial's inputs, the store's URI among them, into the sweep's folder
    (tuner.pkl), which outlives the sweep and may sit in a shared bucket: a password in the URI
    is refused, as a job's command line refuses one (jobs/submit.py)."""
    if carries_credentials(tracking_uri):
        raise UserError(f"--tracking-uri {redact(tracking_uri)}: a sweep saves its tracking URI with its state, "
                        "so it may carry no credential; pass MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                        "(or MLFLOW_TRACKING_TOKEN), MLflow's own variables, instead")


def checked_share(base: Config, space: Space, info: DatasetInfo, where: str, cluster: dict, concurrent: int) -> dict:
    """Each trial's share of `cluster` with `concurrent` trials at once, once every value the space
    can draw is placed within it; a run that does not fit says so in terms of --max-concurrent,
    the option that split the cluster."""
    share = trial_share(cluster, concurrent)
    try:
        check_sweep(base, space, info, where, share)
    except UserError as err:
        raise UserError(f"{err} (each of {concurrent} trials at once gets {share['GPU']:g} of the cluster's "
                        f"{cluster.get('GPU', 0):g} GPUs and {share['CPU']:g} of its {cluster.get('CPU', 0):g} CPUs: "
                        f"lower --max-concurrent)") from None
    return share


def run_sweep(base: Config, space: Space, options: SweepOptions, *, name: str, tracking_uri: str, storage: str,
              model_dir: str | Path, experiment: str = "alexnet", artifact_location: str | None = None,
              tags: dict | None = None, resume: bool = False, space_source: str = "--space",
              ray_session: Callable[[], AbstractContextManager] = nullcontext) -> SweepResult:
    """Search `space` on top of `base` with `options`, as sweep `name`: the trials' checkpoints under
    `storage`, every trial a child of the sweep's MLflow run; the best trial's model is registered
    as base.run.register_as by the champion rule. resume: continue the sweep of this name."""
    check_options(options)
    check_tracking_uri(tracking_uri)
    check_register_as(base.run.register_as)
    info = check_inputs(base)
    check_sweep(base, space, info, space_source)
    folder = sweep_folder(storage, name)
    with ray_session():
        check_tracking_store(tracking_uri, alive_nodes())
        check_storage(storage)
        check_shared(str(base.data.path), "--data")
        cluster = ray.cluster_resources()
        concurrent = options.max_concurrent or default_concurrency(base, cluster)
        share = checked_share(base, space, info, space_source, cluster, concurrent)
        resume = resume or _same_sweep(folder, asked(base, space, options, name=name, experiment=experiment))
        tags = {"trigger": "manual", **(tags or {}), "sweep.name": name, "mlflow.source.name": "alexnet tune"}
        with tracked_run(tracking_uri, experiment=experiment, run_name=name, tags=tags,
                         artifact_location=artifact_location) as run_id:
            plan = SweepPlan(name=name, base=base, storage=storage, tracking_uri=tracking_uri, experiment=experiment,
                             artifact_location=artifact_location, parent_run_id=run_id, share=share,
                             tags=tuple((k, v) for k, v in tags.items() if k in ("trigger", "ray.job_submission_id")))
            if not resume:
                _record_start(plan, space, options, concurrent, space_source)
                store.make_dirs(store.locate(folder))
                write_atomic(store.locate(folder).join(SWEEP_FILE),
                             json.dumps(asked(base, space, options, name=name, experiment=experiment), indent=1))
            print(f"sweep {name}: {options.trials} trials of {base.optim.epochs} epochs, {concurrent} at a time, "
                  f"scheduler {options.scheduler}; state in {folder}", flush=True)
            summaries = run_trials(plan, space, options, concurrent, folder, resume=resume)
            return _finish(plan, info, summaries, model_dir=Path(model_dir))


def run_trials(plan: SweepPlan, space: Space, options: SweepOptions, concurrent: int, folder: str, *,
               resume: bool) -> list[TrialSummary]:
    """Ray Tune's loop over the trials (started, or restored from `folder`) -> each trial's summary."""
    # The trial actor only drives Ray Train (its controller and workers ask their own resources);
    # Tune refuses an empty request, so it asks a token CPU share, not the default whole CPU.
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"CPU": TRIAL_DRIVER_CPU})
    if resume and tune.Tuner.can_restore(folder):
        # An errored trial (a lost node, say) continues from its own checkpoint, like an unfinished one.
        tuner = tune.Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (ASHAScheduler(time_attr=TIME_ATTR, max_t=plan.base.optim.epochs, grace_period=GRACE_EPOCHS,
                                   reduction_factor=REDUCTION_FACTOR) if options.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=to_tune(space),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=options.trials, scheduler=scheduler,
                                        search_alg=searcher(options, concurrent),
                                        # Not reused: Tune would keep an ASHA-stopped trial's actor,
                                        # still training (Ray Train does not see Tune's stop), for
                                        # the next trial, whose workers then wait for its CPUs.
                                        reuse_actors=False,
                                        trial_name_creator=_trial_id, trial_dirname_creator=_trial_id),
            run_config=tune.RunConfig(name=plan.name, storage_path=plan.storage, verbose=0, callbacks=[SweepView(plan, total=options.trials)],
                                      failure_config=tune.FailureConfig(max_failures=plan.base.run.max_failures)),
        )
    try:
        grid = tuner.fit()
        if grid.num_terminated + grid.num_errors < len(grid):
            # Tune's Ctrl-C: it saved its state and stopped the trials, then returned.
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print(f"sweep {plan.name} interrupted; continue it with `alexnet tune --resume {folder}`", flush=True)
        end_running_children(plan, "KILLED")
        raise
    except Exception:  # Tune itself failed (its storage, a restore): no trial run may stay RUNNING
        end_running_children(plan, "FAILED")
        raise
    return [summarize(Path(r.path).name, r.config, _best(r), int((r.metrics or {}).get(TIME_ATTR) or 0),
                      epochs=plan.base.optim.epochs, error=error_line(r.error))
            for r in sorted(grid, key=lambda r: Path(r.path).name)]


def searcher(options: SweepOptions, concurrent: int) -> BasicVariantGenerator:
    """Random search, seeded: the same seed draws the same trials in the same order."""
    return BasicVariantGenerator(random_state=options.seed, max_concurrent=concurrent)


def _trial_id(trial) -> str:
    return trial.trial_id


def _best(result) -> float | None:
    frame = result.metrics_dataframe
    if frame is None or METRIC not in frame or frame[METRIC].dropna().empty:
        return None
    return float(frame[METRIC].max())


def asked(base: Config, space: Space, options: SweepOptions, *, name: str, experiment: str) -> dict:
    """What the sweep was asked (sweep.json): enough for --resume to rebuild it."""
    return {"name": name, "experiment": experiment, "config": base.to_dict(), "space": describe(space),
            "options": asdict(options)}


def read_asked(folder: str) -> tuple[Config, Space, SweepOptions, str, str]:
    """--resume FOLDER -> (base config, space, options, name, experiment), from its sweep.json."""
    loc = store.locate(folder).join(SWEEP_FILE)
    if not store.is_file(loc):
        raise UserError(f"--resume {folder}: not a sweep folder (no {SWEEP_FILE}); `alexnet tune` prints its folder at start")
    try:
        raw = json.loads(store.read_bytes(loc, limit=1 << 20))
        return (from_dict(raw["config"], str(loc)), parse_space(raw["space"], str(loc)), SweepOptions(**raw["options"]),
                raw["name"], raw["experiment"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"--resume {folder}: {SWEEP_FILE} is not readable ({err})") from None


def _same_sweep(folder: str, wanted: dict) -> bool:
    """True when sweep `folder` exists and was asked exactly `wanted` (a rerun of the same command,
    e.g. a scheduled job's retry, continues it, as a rerun of `alexnet train --run-name` does)."""
    if not store.exists(store.locate(folder).join(SWEEP_FILE)):
        return False
    if json.loads(json.dumps(wanted)) != json.loads(store.read_bytes(store.locate(folder).join(SWEEP_FILE), limit=1 << 20)):
        raise UserError(f"sweep {wanted['name']} already exists in {folder} with another recipe, space or options: "
                        f"continue it with `alexnet tune --resume {folder}`, or choose another --name")
    print(f"sweep {wanted['name']} exists in {folder} with the same settings: continuing it", flush=True)
    return True


def _record_start(plan: SweepPlan, space: Space, options: SweepOptions, concurrent: int, space_source: str) -> None:
    """The sweep's MLflow run: the fixed part of the config, the space, search, scheduler and seed."""
    fixed = {k: v for k, v in flatten(plan.base).items() if k not in space}
    scheduler = (f"asha(time_attr={TIME_ATTR}, grace_period={GRACE_EPOCHS}, reduction_factor={REDUCTION_FACTOR}, "
                 f"max_t={plan.base.optim.epochs})" if options.scheduler == "asha" else "none")
    log_params(plan.tracking_uri, plan.parent_run_id, {
        **fixed, **{f"space.{k}": v for k, v in describe(space).items()},
        "sweep.search": "random", "sweep.seed": options.seed, "sweep.scheduler": scheduler,
        "sweep.trials": options.trials, "sweep.max_concurrent": concurrent, "sweep.metric": f"{METRIC} (max)"})
    client = client_for(plan.tracking_uri)
    client.log_text(plan.parent_run_id, to_yaml(plan.base), "config.yaml")
    client.log_text(plan.parent_run_id, "\n".join(f"{k}: {v}" for k, v in describe(space).items()) + "\n", "space.yaml")


def _finish(plan: SweepPlan, info: DatasetInfo, summaries: list[TrialSummary], *, model_dir: Path) -> SweepResult:
    """Every trial's run ended, the table and the best trial on the sweep's run, the best model registered."""
    for summary in summaries:
        if summary.reason in (COMPLETED, EARLY_STOPPED, FAILED):
            end_child_run(plan, summary.trial_id, summary)  # idempotent: a resumed sweep's earlier trials too
    scored = [s for s in summaries if s.best_top1 is not None]
    best = max(scored, key=lambda s: s.best_top1, default=None)
    client = client_for(plan.tracking_uri)
    client.log_text(plan.parent_run_id, trials_table(plan, summaries), "trials.csv")
    counts = {reason: sum(s.reason == reason for s in summaries) for reason in (COMPLETED, EARLY_STOPPED, FAILED)}
    set_tags(plan.tracking_uri, plan.parent_run_id, {f"sweep.{k.replace('-', '_')}": v for k, v in counts.items()})
    if best is None:
        raise UserError(f"sweep {plan.name}: no trial finished an epoch; see each trial's line above")
    best_run = child_run_id(plan, best.trial_id) or ""
    client.log_metric(plan.parent_run_id, "best/val_top1", best.best_top1)
    set_tags(plan.tracking_uri, plan.parent_run_id, {"sweep.best_trial_id": best.trial_id, "sweep.best_run_id": best_run})
    published = _register_best(plan, info, best, best_run, model_dir)
    return SweepResult(plan.name, plan.parent_run_id, summaries, best, best_run,
                       f"models:/{plan.base.run.register_as}/{published.version}" if published and published.version else "",
                       published.alias if published else "", published.decision if published else "")


def _register_best(plan: SweepPlan, info: DatasetInfo, best: TrialSummary, run_id: str, model_dir: Path):
    """The best trial's best checkpoint, scored and registered as `alexnet train` registers its model."""
    done = client_for(plan.tracking_uri).get_run(plan.parent_run_id).data.tags.get("sweep.registered")
    if done:
        print(f"the best trial's model was registered before: {done}", flush=True)
        return None
    cfg = apply(plan.base, best.params)
    run_name = trial_run_name(plan.name, best.trial_id)
    found, latest = checkpoint.find_best(plan.storage, run_name), checkpoint.find_latest(plan.storage, run_name)
    if found is None:
        raise UserError(f"sweep {plan.name}: the best trial {best.trial_id} left no checkpoint under {plan.storage}")
    path, meta = found
    outcome = Outcome(run_name=run_name, val_top1=float(meta["metrics"][METRIC]), epochs=latest[1] + 1,
                      best_checkpoint=path, latest_checkpoint=latest[0], storage=plan.storage,
                      best_epoch=int(meta["epoch"]))
    published, pending = after_training(cfg, info, train_preset(info, **cfg.data.augmentation), outcome,
                                        tracking_uri=plan.tracking_uri, run_id=run_id, model_dir=model_dir)
    if pending is not None:
        raise UserError(f"sweep {plan.name}: the best trial's model is not registered: {pending}")
    set_tags(plan.tracking_uri, plan.parent_run_id,
             {"sweep.registered": f"models:/{plan.base.run.register_as}/{published.version}" if published.version else "-"})
    return published


def trials_table(plan: SweepPlan, summaries: list[TrialSummary]) -> str:
    """trials.csv: one row per trial, its draw, stop reason, best val top-1 and epochs run."""
    keys = sorted({k for s in summaries for k in s.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial_id", "run_name", *keys, "stop_reason", "best_val_top1", "epochs_run", "error"])
    for s in summaries:
        writer.writerow([s.trial_id, trial_run_name(plan.name, s.trial_id), *(s.params.get(k, "") for k in keys),
                         s.reason, "" if s.best_top1 is None else f"{s.best_top1:.6f}", s.epochs, s.error])
    return out.getvalue()
