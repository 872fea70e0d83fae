"""A training run wired together: MLflow run -> TorchTrainer -> report, logged and registered model.

Used by `alexnet train` and `alexnet demo` alike, so both produce the same MLflow story. The
run is looked up by name first: re-running a run name that Ray resumes from its checkpoints
continues the same MLflow run (metrics go on at the resumed epochs' steps).
"""

from __future__ import annotations

import datetime
import platform
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from alexnet.config import Config, flatten, to_yaml
from alexnet.provenance import git_commit
from alexnet.tracking import (TrackingUnavailable, is_local_store, log_params, redact, set_tags, using_store,
                              tracked_run)
from alexnet.trainer import check_inputs, fit, load_classifier, resume_point
from jobs.runtime import configure_mlflow_client
from pipelines.dataset import DatasetInfo
from pipelines.errors import UserError

SAMPLE_GRID_IMAGES = 32  # augmented training crops shown in samples/train_augmented.png
LOG_MODEL_ATTEMPTS = 3  # the final model upload survives a short tracking outage


@dataclass(frozen=True)
class RunReport:
    run_id: str
    run_name: str
    val_top1: float
    chance: float
    epochs: int
    checkpoint: str
    model_uri: str
    registered: str
    alias: str = ""  # champion | challenger | "" (not registered)
    decision: str = ""  # why


def new_run_name(prefix: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


def provenance(cfg: Config, info: DatasetInfo) -> dict:
    import mlflow
    import ray
    import torch

    resources = ray.cluster_resources() if ray.is_initialized() else {}
    params = {
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
        params["git.commit"] = commit
    return params


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_tracking_store(tracking_uri: str, nodes: int) -> None:
    """A SQLite/file store is one machine's file: rank 0 on another node cannot write to it."""
    if nodes > 1 and is_local_store(tracking_uri):
        raise UserError(
            f"--tracking-uri {redact('uri', tracking_uri)} is a local file store, but the Ray cluster has {nodes} "
            f"nodes and the rank-0 worker may run on another one; start an MLflow tracking server "
            f"(mlflow server --host 0.0.0.0 ...) and pass --tracking-uri http://HOST:PORT")


def run_training(cfg: Config, *, tracking_uri: str, storage: str, run_name: str, experiment: str = "alexnet",
                 artifact_location: str | None = None, tags: dict | None = None,
                 resume_from: str | None = None) -> RunReport:
    configure_mlflow_client()
    info = check_inputs(cfg)
    check_tracking_store(tracking_uri, alive_nodes())
    # An incompatible checkpoint is refused now, before an MLflow run exists that would only record the refusal.
    resume_point(cfg, storage, run_name, resume_from, num_classes=info.num_classes)
    print("resolved config:\n" + to_yaml(cfg), flush=True)
    tags = {"trigger": "manual", **(tags or {}), "ray.run_name": run_name}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    with tracked_run(tracking_uri, experiment=experiment, run_name=run_name, tags=tags,
                     artifact_location=artifact_location) as run_id:
        changed = log_params(tracking_uri, run_id, provenance(cfg, info))
        if changed:
            print(f"[tracking] resumed run keeps its first values of {', '.join(changed)} "
                  f"(MLflow params cannot change)", file=sys.stderr)
        outcome = fit(cfg, info, run_name=run_name, storage=storage, tracking_uri=tracking_uri, run_id=run_id,
                      resume_from=resume_from)
        if getattr(outcome, "resumed_from_epoch", None) is not None:
            set_tags(tracking_uri, run_id, {"resumed_from_epoch": outcome.resumed_from_epoch})
        classifier = _classifier(outcome.best_checkpoint, info, cfg)
        log_report(run_id, tracking_uri, classifier, info, cfg)
        model_uri, version = log_model(run_id, tracking_uri, classifier, cfg, outcome.best_checkpoint)
        alias, decision = "", ""
        if version:
            alias, decision = register(tracking_uri, cfg.run.register_as, version, outcome.val_top1, info)
    registered = f"models:/{cfg.run.register_as}/{version}" if version else ""
    return RunReport(run_id, run_name, outcome.val_top1, 1.0 / info.num_classes, outcome.epochs,
                     outcome.best_checkpoint, model_uri, registered, alias, decision)


def _classifier(checkpoint_dir: str, info: DatasetInfo, cfg: Config):
    classifier, _ = load_classifier(checkpoint_dir, info)
    classifier.crop, classifier.resize = cfg.data.crop, cfg.data.resize  # predict preprocesses like val
    return classifier


def log_report(run_id: str, tracking_uri: str, classifier, info: DatasetInfo, cfg: Config) -> None:
    """config.yaml, class_index.json, the val confusion matrix and per-class table, and a grid of
    augmented training crops. A failure here is reported and tagged; it never loses the model."""
    from alexnet.tracking import client_for

    from alexnet import report
    from alexnet.predict import evaluate
    from pipelines.loader import train_dataset

    client = client_for(tracking_uri)
    client.log_text(run_id, to_yaml(cfg), "config.yaml")
    client.log_dict(run_id, {str(i): name for i, name in enumerate(info.classes)}, "class_index.json")
    try:
        scores, labels, preds = evaluate(classifier, info, ten_crop=cfg.data.ten_crop_eval)
        cm = report.confusion_matrix(labels, preds, info.num_classes)
        rows = report.per_class_rows(cm, info.classes)
        sample = train_dataset(info, crop=cfg.data.crop, resize=cfg.data.resize, pca_std=cfg.data.pca_lighting, flip=cfg.data.flip,
                               seed=None, random_resized_crop=cfg.data.random_resized_crop).take(SAMPLE_GRID_IMAGES)
        with tempfile.TemporaryDirectory() as tmp:
            report.confusion_png(cm, info.classes, Path(tmp) / "confusion_matrix.png")
            (Path(tmp) / "per_class_accuracy.csv").write_text(report.rows_to_csv(rows))
            client.log_artifact(run_id, str(Path(tmp) / "confusion_matrix.png"), "eval")
            client.log_artifact(run_id, str(Path(tmp) / "per_class_accuracy.csv"), "eval")
            report.sample_grid(_stack([r["image"] for r in sample]), [r["label"] for r in sample], info.classes,
                               Path(tmp) / "train_augmented.png")
            client.log_artifact(run_id, str(Path(tmp) / "train_augmented.png"), "samples")
        client.log_dict(run_id, {"top1": scores.top1, "top5": scores.top5, "images": scores.images,
                                 "confusion_matrix": cm.tolist(), "classes": info.classes}, "eval/val_scores.json")
    except Exception as err:
        print(f"[report] val report not logged: {type(err).__name__}: {err}", file=sys.stderr)
        set_tags(tracking_uri, run_id, {"report.error": f"{type(err).__name__}: {err}"[:500]})


def _stack(images):
    import numpy as np

    return np.stack([np.asarray(i, dtype=np.uint8) for i in images])


def log_model(run_id: str, tracking_uri: str, classifier, cfg: Config, checkpoint_dir: str) -> tuple[str, str]:
    """Log the best checkpoint as an MLflow PyTorch model (uint8 NCHW in, logits out), registered
    as cfg.run.register_as. Returns (model URI, registered version or "")."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.zeros((2, 3, cfg.data.crop, cfg.data.crop), dtype=np.uint8)
    with torch.no_grad():
        logits = classifier(torch.from_numpy(example)).numpy()
    metadata = {"crop": cfg.data.crop, "resize": cfg.data.resize, "classes": list(classifier.classes),
                "input": "uint8 NCHW RGB, centre crop of the image resized to `resize` on its shorter side"}
    for attempt in range(1, LOG_MODEL_ATTEMPTS + 1):
        try:
            with using_store(tracking_uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
                logged = mlflow.pytorch.log_model(
                    classifier, name="model", signature=infer_signature(example, logits), input_example=example,
                    registered_model_name=cfg.run.register_as or None, metadata=metadata,
                    # pickle keeps the Classifier itself (classes, crop, resize, uint8 input, any
                    # batch size); pt2 (torch.export) would keep only a traced graph.
                    serialization_format="pickle",
                )
            break
        except Exception as err:
            if attempt == LOG_MODEL_ATTEMPTS:
                raise TrackingUnavailable(f"could not log the model to {redact('uri', tracking_uri)} "
                                          f"({type(err).__name__}: {err}); the trained weights are in "
                                          f"{checkpoint_dir}") from err
            print(f"[tracking] logging the model failed ({type(err).__name__}); retrying", file=sys.stderr)
            time.sleep(10 * attempt)
    version = str(logged.registered_model_version) if cfg.run.register_as and logged.registered_model_version else ""
    return logged.model_uri, version


def register(tracking_uri: str, name: str, version: str, val_top1: float, info: DatasetInfo) -> tuple[str, str]:
    """champion or challenger (alexnet/registry.py); a champion from another dataset version is
    re-scored on this version's val split before the comparison."""
    from alexnet.tracking import client_for

    from alexnet import registry
    from alexnet.predict import evaluate, load_model

    def rescore(champion_version: str) -> float | None:
        champion = load_model(f"models:/{name}/{champion_version}", tracking_uri)
        if list(champion.classes) != list(info.classes):
            return None
        return evaluate(champion, info)[0].top1

    decision = registry.assign_alias(client_for(tracking_uri), name, version, val_top1=val_top1,
                                     dataset_version=info.version, rescore=rescore)
    print(f"model {name} v{version}: {decision.alias} ({decision.reason})", flush=True)
    return decision.alias, decision.reason
