"""`alexnet register FOLDER`: register a trained model that waited on disk for MLflow.

When the tracking store does not answer at the end of `alexnet train` or `alexnet demo`, the
trained model is kept in WORKDIR/models/RUN_NAME with what was left to do (registration.json),
and the error names this command. Once the store answers it finishes the job: logs the model
into its run, registers it, gives it its alias by the champion rule (re-scoring the champion on
the run's dataset when needed), marks the run FINISHED, and removes the folder.
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    p = sub.add_parser("register", help="register a model that training saved on disk while MLflow was down",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the folder the training run named (WORKDIR/models/RUN_NAME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the run's own, "
                                          "recorded in the folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from alexnet.track.publish import publish, read_registration
    from alexnet.run import rescorer
    from jobs.runtime import ray_session
    from pipelines.dataset import INFO_FILE, open_dataset
    from pipelines.errors import UserError

    registration = read_registration(args.folder)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or registration["tracking_uri"]
    if "***" in tracking_uri:
        raise UserError(f"{args.folder}: the run's tracking URI carried credentials, which are not kept on disk; "
                        f"pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    evaluation, rescore = registration["evaluation"], None
    if registration["register_as"] and Path(registration["dataset_path"], INFO_FILE).is_file():
        info = open_dataset(registration["dataset_path"])
        if info.version == evaluation["dataset_version"]:  # a champion is re-scored on the images the model was
            rescore = rescorer(tracking_uri, registration["register_as"], info, ten_crop=evaluation["ten_crop"])
    with ray_session() if rescore is not None else contextlib.nullcontext():  # Ray only to re-score a champion
        published = publish(args.folder, tracking_uri, rescore=rescore, close_run=True)
    where = f"models:/{registration['register_as']}/{published.version}" if published.version else published.model_uri
    print(f"{where}: {published.alias or 'logged'}" + (f" ({published.decision})" if published.decision else "")
          + f"; MLflow run {registration['run_id']} is FINISHED")
    return 0
