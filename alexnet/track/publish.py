"""A trained model into the registry, with nothing lost when the tracking store is down.

`stage` first writes the model (alexnet.serve.model_files's two files) and `registration.json`, what is
left to do, into a local folder, atomically; the run's report (alexnet.serve.val_report) goes beside them.
`publish` then logs the model into its run, registers it as a new version, gives it its alias
(alexnet.track.registry) and uploads the report, each step retried through a short outage and noted
in `registration.json` once done; when all are done the folder is removed. If the store stays down, the folder stays: `alexnet register FOLDER` calls
`publish` again later and carries on from the first step not done.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mlflow.models import Model

from alexnet.serve import model_files as export
from alexnet.serve.model_files import Classifier, write_atomically
from alexnet.track.registry import Evaluation, assign_alias, ensure_version
from alexnet.track.tracking import TrackingUnavailable, client_for, explain, is_tracking_error, retrying, using_store
from pipelines.atomic import write_atomic
from pipelines.errors import UserError
from pipelines.redaction import redact

REGISTRATION_FILE = "registration.json"
MODEL_NAME = "model"  # the logged model's name in its run
PENDING_TAG = "model.pending"  # run tag: where the model waits for `alexnet register`
REPORT_DIR = "report"  # in a staged folder: the run's report artifacts (eval/, samples/), uploaded with the model


@dataclass(frozen=True)
class Published:
    model_uri: str  # models:/m-ID, the logged model
    version: str  # registered version, "" when the run registers nothing
    alias: str  # champion | challenger | ""
    decision: str  # why


class NotPublished(TrackingUnavailable):
    """The store stayed down or refused; the model waits in `folder` for `alexnet register`."""

    def __init__(self, message: str, folder: Path):
        super().__init__(message)
        self.folder = folder


def stage(classifier: Classifier, parent: str | os.PathLike, *, name: str, run_id: str, register_as: str,
          evaluation: Evaluation, dataset_path: str, tracking_uri: str, step: int) -> Path:
    """PARENT/NAME (NAME-2, ... when taken): the model and registration.json, complete or absent."""
    registration = {"run_id": run_id, "register_as": register_as, "evaluation": asdict(evaluation),
                    "dataset_path": dataset_path, "step": step,
                    # credentials stay out of files: a URI that carried them is given again to `alexnet register`
                    "tracking_uri": redact(tracking_uri), "model_id": None, "model_uri": None,
                    "version": None, "alias": None, "decision": None, "report_logged": False}
    parent = Path(parent)
    folder, n = parent / name, 1
    while folder.exists():
        n += 1
        folder = parent / f"{name}-{n}"
    return write_atomically(classifier, folder, {REGISTRATION_FILE: json.dumps(registration, indent=2)})


def read_registration(folder: str | os.PathLike) -> dict:
    path = Path(folder) / REGISTRATION_FILE
    try:
        registration = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no {REGISTRATION_FILE}; not a model left by `alexnet train` to register") from None
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(registration, dict) or not isinstance(registration.get("run_id"), str):
        raise UserError(f"{path}: no run_id; not a model left by `alexnet train` to register")
    return registration


def _note(folder: Path, registration: dict, **done) -> None:
    """Record finished steps (temp file + rename: a kill never leaves half a file)."""
    registration.update(done)
    write_atomic(folder / REGISTRATION_FILE, json.dumps(registration, indent=2))


def register_command(folder: Path, tracking_uri: str) -> str:
    """The command that finishes the job later (the URI is added when the folder cannot hold it)."""
    hidden = redact(tracking_uri) != tracking_uri
    return f"alexnet register {folder}" + (" --tracking-uri URI" if hidden else "")


def publish(folder: str | os.PathLike, tracking_uri: str,
            rescore: Callable[[str], tuple[float | None, str]] | None = None, *, close_run: bool = False) -> Published:
    """Log, register and alias the staged model in `folder`, upload the run's report staged with it;
    remove the folder when all is done.
    close_run (`alexnet register`): also end the run an outage left RUNNING.

    A tracking store that stays down or refuses raises NotPublished (the folder stays); any other
    error is a bug and propagates, the folder staying too."""
    folder = Path(folder)
    registration = read_registration(folder)
    run_id, name = registration["run_id"], registration["register_as"]
    try:
        # the registry resolves models:/m-ID through the process's tracking store: this one
        with using_store(tracking_uri):
            if not registration["model_uri"]:
                model_id = registration["model_id"] or retrying(
                    lambda: _new_logged_model(tracking_uri, run_id), what="creating the logged model")
                _note(folder, registration, model_id=model_id)
                retrying(lambda: _upload(tracking_uri, run_id, model_id, folder, registration["step"]),
                         what="uploading the model")
                _note(folder, registration, model_uri=f"models:/{model_id}")
            if name and not registration["version"]:
                version = retrying(lambda: ensure_version(client_for(tracking_uri), name, registration["model_uri"], run_id),
                                   what=f"registering the model as {name}")
                _note(folder, registration, version=version)
            if name and not registration["alias"]:
                evaluation = Evaluation(**registration["evaluation"])
                decision = retrying(lambda: assign_alias(client_for(tracking_uri), name, registration["version"],
                                                         evaluation, rescore=_once(rescore)),
                                    what=f"deciding {name} v{registration['version']}'s alias")
                _note(folder, registration, alias=decision.alias, decision=decision.reason)
            if (folder / REPORT_DIR).is_dir() and not registration.get("report_logged"):
                retrying(lambda: client_for(tracking_uri).log_artifacts(run_id, str(folder / REPORT_DIR)),
                         what="uploading the run's report")
                _note(folder, registration, report_logged=True)
            if close_run:
                retrying(lambda: _close_run(tracking_uri, run_id), what=f"closing MLflow run {run_id}")
    except Exception as err:
        if not is_tracking_error(err):
            raise
        raise NotPublished(f"{explain(err, tracking_uri)}. The model is saved in {folder}; when the store answers, "
                           f"`{register_command(folder, tracking_uri)}` registers it", folder) from err
    shutil.rmtree(folder, ignore_errors=True)
    return Published(registration["model_uri"], registration["version"] or "", registration["alias"] or "",
                     registration["decision"] or "")


def _once(rescore):
    """A retried decision re-uses a re-score (minutes on a large val split) instead of repeating it."""
    if rescore is None:
        return None
    done: dict = {}
    return lambda version: done[version] if version in done else done.setdefault(version, rescore(version))


def _new_logged_model(tracking_uri: str, run_id: str) -> str:
    client = client_for(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id).model_id


def _upload(tracking_uri: str, run_id: str, model_id: str, folder: Path, step: int) -> None:
    """MLflow's Model.log into the logged model `model_id` (created once, so retries add no
    duplicates), with this project's flavor (alexnet.serve.model_files.save_model)."""


    Model.log(None, flavor=export, name=MODEL_NAME, run_id=run_id, model_id=model_id, step=step, package=str(folder))


def _close_run(tracking_uri: str, run_id: str) -> None:
    """A run left RUNNING by an outage at its end is marked FINISHED (its training had succeeded),
    and the tag that pointed at the waiting model goes."""
    client = client_for(tracking_uri)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "FINISHED")
    if PENDING_TAG in run.data.tags:
        client.delete_tag(run_id, PENDING_TAG)
