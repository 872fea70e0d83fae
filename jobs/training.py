"""A training run wired together: MLflow run -> TorchTrainer -> logged and registered model.

Used by `alexnet train` and `alexnet demo` alike, so both produce the same MLflow story.
"""

from __future__ import annotations

import datetime
import platform
import secrets
from dataclasses import dataclass

from alexnet.config import Config, flatten, to_yaml
from alexnet.tracking import log_params, tracked_run
from alexnet.trainer import check_inputs, fit, load_classifier
from pipelines.dataset import DatasetInfo


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


def new_run_name(prefix: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


def provenance(cfg: Config, info: DatasetInfo) -> dict:
    import mlflow
    import ray
    import torch

    return {
        **flatten(cfg),
        "dataset.path": info.path,
        "dataset.version": info.version,
        "dataset.num_classes": info.num_classes,
        "dataset.train_images": info.split_size("train"),
        "dataset.val_images": info.split_size("val"),
        "version.torch": torch.__version__,
        "version.ray": ray.__version__,
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }


def run_training(cfg: Config, *, tracking_uri: str, storage: str, run_name: str, experiment: str = "alexnet",
                 artifact_location: str | None = None, tags: dict | None = None,
                 resume_from: str | None = None) -> RunReport:
    info = check_inputs(cfg)
    print("resolved config:\n" + to_yaml(cfg), flush=True)
    tags = {"trigger": "manual", **(tags or {})}
    with tracked_run(tracking_uri, experiment=experiment, run_name=run_name, tags=tags,
                     artifact_location=artifact_location) as run_id:
        log_params(tracking_uri, run_id, provenance(cfg, info))
        outcome = fit(cfg, info, run_name=run_name, storage=storage, tracking_uri=tracking_uri, run_id=run_id,
                      resume_from=resume_from)
        model_uri, registered = log_model(run_id, tracking_uri, outcome.best_checkpoint, info, cfg)
    return RunReport(run_id, run_name, outcome.val_top1, 1.0 / info.num_classes, outcome.epochs,
                     outcome.best_checkpoint, model_uri, registered)


def log_model(run_id: str, tracking_uri: str, checkpoint_dir: str, info: DatasetInfo, cfg: Config) -> tuple[str, str]:
    """Log the best checkpoint as an MLflow PyTorch model (uint8 NCHW in, logits out) and register it."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    classifier, _ = load_classifier(checkpoint_dir, info)
    example = np.zeros((2, 3, cfg.data.crop, cfg.data.crop), dtype=np.uint8)
    with torch.no_grad():
        logits = classifier(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        mlflow.log_text(to_yaml(cfg), "config.yaml")
        mlflow.log_dict({str(i): name for i, name in enumerate(info.classes)}, "class_index.json")
        logged = mlflow.pytorch.log_model(
            classifier, name="model", signature=infer_signature(example, logits), input_example=example,
            registered_model_name=cfg.run.register_as or None,
        )
    registered = ""
    if cfg.run.register_as and logged.registered_model_version is not None:
        registered = f"models:/{cfg.run.register_as}/{logged.registered_model_version}"
    return logged.model_uri, registered
