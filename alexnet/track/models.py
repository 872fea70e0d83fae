"""A model logged to MLflow, loaded by its URI: what `predict`, `evaluate` and the champion
re-score read.

The model's artifact is downloaded and read by alexnet.serve.model_files.load, the one loader of a
model's files: `alexnet.json` and `weights.pt` (weights_only=True); whatever else a model version
carries, a pickle or code, is never run here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow

from alexnet.serve.model_files import Classifier, load
from alexnet.track.tracking import TrackingUnavailable, explain, is_outage, is_tracking_error, using_store
from pipelines.errors import UserError, first_line
from pipelines.redaction import redact


def load_model(model_uri: str, tracking_uri: str | None = None, *, label: str | None = None) -> Classifier:
    """An MLflow model URI (models:/alexnet@champion, models:/m-ID, runs:/ID/model) or a model
    folder -> Classifier on CPU, in eval mode. `label` names the model in errors (default: the URI)."""
    label = label or model_uri
    if Path(model_uri).is_dir():
        return load(model_uri, source=label)
    _refuse_an_unnamed_store(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with using_store(tracking_uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        except Exception as err:  # MLflow raises several types for a missing model, alias or run
            if not is_tracking_error(err):
                raise
            uri = tracking_uri or mlflow.get_tracking_uri()
            if is_outage(err) or getattr(err, "error_code", "") in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                raise TrackingUnavailable(f"{label}: {explain(err, uri)}") from err
            raise UserError(f"{label}: cannot load it from {redact(uri)}: {first_line(err)}") from None
        return load(local, source=label)


def _refuse_an_unnamed_store(model_uri: str, tracking_uri: str | None) -> None:
    """With no store named, MLflow 3 opens ./mlflow.db of the current folder, creating an empty one
    there, and then reports only that the model does not exist. `alexnet train` keeps its store in
    its work folder, so say where to look instead, and leave the folder as it was."""
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or not model_uri.startswith(("models:", "runs:")):
        return
    if Path("mlflow.db").exists():
        return
    raise UserError(f"{model_uri}: no tracking store named and no ./mlflow.db here; pass the store that "
                    "registered it (alexnet train keeps it in its work folder: "
                    "MLFLOW_TRACKING_URI=sqlite:////ABS/PATH/alexnet-work/mlflow.db, or the server's http:// URI)")
