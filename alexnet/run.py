"""One training run, tracked and registered: what `alexnet train` and `alexnet demo` do, in one call.

    check the inputs (no Ray yet) -> start Ray (the caller's session) -> check where checkpoints
    and metrics go, find where the run resumes -> open the MLflow run, record its origin -> fit
    (alexnet.train) -> score the best checkpoint (alexnet.serve) -> stage the model on local disk
    with its report -> log, register and alias it (alexnet.track) -> close the run

The run is looked up by name first: re-running a run name that Ray resumes from its checkpoints
continues the same MLflow run. Once training has succeeded, nothing the tracking store does
loses the model, its report or marks the run FAILED: a model that cannot be registered waits in
`model_dir`, with its report, for `alexnet register`, which the error names; a report that
cannot be made is one line and a `report.error` tag.
"""

from __future__ import annotations

import datetime
import platform
import secrets
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import ray
import torch

from alexnet.config import Config, flatten, to_yaml
from alexnet.serve.model_files import ModelFileError, from_training_state
from alexnet.serve.predict import evaluate
from alexnet.serve.val_report import write_report
from alexnet.track.models import load_model
from alexnet.track.provenance import git_commit
from alexnet.track.publish import PENDING_TAG, REPORT_DIR, NotPublished, publish, stage
from alexnet.track.registry import Evaluation
from alexnet.track.tracking import (TrackingUnavailable, client_for, explain, is_local_store, is_tracking_error,
                                    log_dataset, log_params, set_tags, tracked_run)
from alexnet.train import checkpoint
from alexnet.train.fit import Outcome, check_inputs, fit, resume_point
from pipelines.shared_folder import check_shared, check_storage
from pipelines.dataset import DatasetInfo
from pipelines.errors import UserError, first_line
from pipelines.read.augment import TrainPreset
from pipelines.read.loader import scale_note, stored_side, train_preset
from pipelines.redaction import redact


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_name: str
    val_top1: float  # the best epoch's, as the training loop measured it
    chance: float
    epochs: int
    best_epoch: int  # 0-based, the epoch of `checkpoint` and `val_top1`
    checkpoint: str
    model_uri: str
    registered: str  # models:/NAME/VERSION, or "" (not registered)
    alias: str = ""  # champion | challenger | "" (not registered)
    decision: str = ""  # why


def new_run_name(prefix: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


def run_training(cfg: Config, *, tracking_uri: str, storage: str, run_name: str, model_dir: str | Path,
                 experiment: str = "alexnet", artifact_location: str | None = None, tags: dict | None = None,
                 resume_from: str | None = None, source: str = "alexnet train",
                 ray_session: Callable[[], AbstractContextManager] = nullcontext) -> RunResult:
    """Train `cfg` as MLflow run `run_name` and register the best checkpoint as cfg.run.register_as.
    model_dir: where the model waits, on local disk, until it is registered. source: the command
    that started the run (the MLflow tag mlflow.source.name). ray_session: enters Ray (jobs.runtime),
    once the inputs that need no Ray have been checked."""
    info = check_inputs(cfg)
    check_register_as(cfg.run.register_as)
    preset = train_preset(info, **cfg.data.augmentation)
    note = scale_note(stored_side(info), cfg.data.resize)
    if note:
        print(note, flush=True)
    with ray_session():
        check_tracking_store(tracking_uri, alive_nodes())
        check_storage(storage)  # a node-local --storage on a multi-node cluster: one line now, not after an epoch
        check_shared(str(cfg.data.path), "--data")  # and a node-local dataset, read by tasks on every node
        # An incompatible checkpoint is refused now, before an MLflow run exists that would only record the refusal.
        resume = resume_point(cfg, storage, run_name, resume_from, num_classes=info.num_classes)
        print("resolved config:\n" + to_yaml(cfg, compact=True), flush=True)
        tags = {"trigger": "manual", **(tags or {}), "ray.run_name": run_name}
        tags.update(source_tags(source, job="ray.job_submission_id" in tags))
        with tracked_run(tracking_uri, experiment=experiment, run_name=run_name, tags=tags,
                         artifact_location=artifact_location) as run_id:
            record_origin(tracking_uri, run_id, cfg, info)
            outcome = fit(cfg, info, preset, run_name=run_name, storage=storage, tracking_uri=tracking_uri,
                          run_id=run_id, resume=resume)
            published, pending = after_training(cfg, info, preset, outcome, tracking_uri=tracking_uri, run_id=run_id,
                                                model_dir=Path(model_dir))
    if pending is not None:
        raise TrackingUnavailable(f"training finished (best val top-1 {outcome.val_top1:.4f}, checkpoint "
                                  f"{outcome.best_checkpoint}) but the model is not registered: {pending}")
    registered = f"models:/{cfg.run.register_as}/{published.version}" if published.version else ""
    return RunResult(run_id, run_name, outcome.val_top1, 1.0 / info.num_classes, outcome.epochs, outcome.best_epoch,
                     outcome.best_checkpoint, published.model_uri, registered, published.alias, published.decision)


def source_tags(source: str, *, job: bool) -> dict[str, str]:
    """MLflow's standard tags for the code behind a run: the run page's Source."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "JOB" if job else "LOCAL"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def record_origin(tracking_uri: str, run_id: str, cfg: Config, info: DatasetInfo) -> None:
    """Params, the dataset as the run's input, config.yaml and class_index.json: before training,
    so a store that refuses them stops the run now (one line) rather than after hours."""
    try:
        changed = log_params(tracking_uri, run_id, params(cfg, info))
        if changed:
            print(f"[tracking] resumed run keeps its first values of {', '.join(changed)} "
                  f"(MLflow params cannot change)", file=sys.stderr)
        log_dataset(tracking_uri, run_id, info)
        client = client_for(tracking_uri)
        client.log_text(run_id, to_yaml(cfg), "config.yaml")
        client.log_dict(run_id, {str(i): name for i, name in enumerate(info.classes)}, "class_index.json")
    except Exception as err:
        if not is_tracking_error(err):
            raise
        raise TrackingUnavailable(explain(err, tracking_uri)) from err


def after_training(cfg: Config, info: DatasetInfo, preset: TrainPreset, outcome: Outcome, *, tracking_uri: str,
                   run_id: str, model_dir: Path) -> tuple:
    """(Published, None), or (None, why) when the store kept the model from being registered; the
    model then waits in model_dir. Tracking failures never raise from here: training succeeded."""
    classifier = from_training_state(checkpoint.load(outcome.best_checkpoint), info)
    print(f"scoring the best checkpoint (epoch {outcome.best_epoch + 1}) on the val split", flush=True)
    # The number the champion rule compares: alexnet.serve.predict.evaluate, the same function that re-scores a champion.
    scores, labels, preds = evaluate(classifier, info, ten_crop=cfg.data.ten_crop_eval)
    evaluation = Evaluation(info.version, cfg.data.ten_crop_eval, scores.top1, scores.top5, scores.images)
    folder = stage(classifier, model_dir, name=outcome.run_name, run_id=run_id, register_as=cfg.run.register_as,
                   evaluation=evaluation, dataset_path=info.path, tracking_uri=tracking_uri,
                   step=outcome.epochs - 1)
    try:
        if outcome.resumed_from_epoch is not None:
            _quietly(lambda: set_tags(tracking_uri, run_id, {"resumed_from_epoch": outcome.resumed_from_epoch}),
                     "the resumed_from_epoch tag", tracking_uri, run_id)
        _quietly(lambda: write_report(folder / REPORT_DIR, info, preset, scores, labels, preds,
                                      ten_crop=cfg.data.ten_crop_eval),
                 "the val report", tracking_uri, run_id)  # uploaded by publish, with the model
        published = publish(folder, tracking_uri, rescore=rescorer(tracking_uri, cfg.run.register_as, info,
                                                                     ten_crop=cfg.data.ten_crop_eval))
    except NotPublished as err:
        waiting = str(err.folder)
        _quietly(lambda: set_tags(tracking_uri, run_id, {PENDING_TAG: waiting}), "the model.pending tag",
                 tracking_uri, run_id, tag=False)
        return None, str(err)
    except BaseException:
        print(f"[model] the trained model is saved in {folder}; `alexnet register {folder}` registers it",
              file=sys.stderr, flush=True)
        raise
    if published.version:
        print(f"model {cfg.run.register_as} v{published.version}: {published.alias} ({published.decision})", flush=True)
    return published, None


def _quietly(step, what: str, tracking_uri: str, run_id: str, *, tag: bool = True) -> None:
    """A report step that must not cost the model: a failure is one line (and a tag, if it lands)."""
    try:
        step()
    except Exception as err:
        print(f"[report] {what} not logged ({first_line(err)}); the model is not affected", file=sys.stderr, flush=True)
        if tag:
            try:
                set_tags(tracking_uri, run_id, {"report.error": f"{what}: {first_line(err)}"[:500]})
            except Exception:  # the store is down: the line above said what is missing
                pass


def rescorer(tracking_uri: str, name: str, info: DatasetInfo, *, ten_crop: bool):
    """champion version -> (its top-1 on `info`'s val split, scored like the new version, or None, why not)."""
    def rescore(version: str) -> tuple[float | None, str]:
        label = f"champion {name} v{version}"
        try:
            champion = load_model(f"models:/{name}/{version}", tracking_uri, label=label)
        except TrackingUnavailable:
            raise  # an outage: publish retries, or keeps the model for `alexnet register`
        except (ModelFileError, UserError) as err:
            return None, str(err)
        if list(champion.classes) != list(info.classes):
            return None, f"its {len(champion.classes)} classes differ from the dataset's {len(info.classes)}"
        return evaluate(champion, info, ten_crop=ten_crop)[0].top1, ""

    return rescore


def params(cfg: Config, info: DatasetInfo) -> dict:
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    values = {
        **flatten(cfg),
        "dataset.path": info.path,
        "dataset.version": info.version,
        "dataset.num_classes": info.num_classes,
        "dataset.train_images": info.split_size("train"),
        "dataset.val_images": info.split_size("val"),
        "cluster.gpus": int(resources.get("GPU", 0)),
        "cluster.cpus": int(resources.get("CPU", 0)),
        "version.torch": torch.__version__,
        "version.ray": ray.__version__,
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }
    commit = git_commit()
    if commit:
        values["git.commit"] = commit
    return values


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_tracking_store(tracking_uri: str, nodes: int) -> None:
    """A SQLite/file store is one machine's file: rank 0 on another node cannot write to it."""
    if nodes > 1 and is_local_store(tracking_uri):
        raise UserError(
            f"--tracking-uri {redact(tracking_uri)} is a local file store, but the Ray cluster has {nodes} "
            f"nodes and the rank-0 worker may run on another one; start an MLflow tracking server "
            f"(mlflow server --host 0.0.0.0 ...) and pass --tracking-uri http://HOST:PORT")


def check_register_as(name: str) -> None:
    """MLflow's rule for model names, checked before training rather than after it."""
    if name and (any(c in name for c in "/:") or not name.strip()):
        raise UserError(f"run.register_as={name!r}: MLflow model names cannot contain '/' or ':' "
                        f"(or be blank); '' skips registration")
