"""`alexnet train`: train AlexNet on an ingested dataset with Ray Train, tracked in MLflow.

Runs on the cluster of a Ray job (RAY_ADDRESS) or on a local Ray it starts itself. The config
comes from a recipe (shipped name or YAML file) plus --set overrides; it is printed at start.
"""

from __future__ import annotations

import argparse
import os

from jobs.commands import parse_pairs
from pipelines.errors import UserError
from pipelines.storage import absolute


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train on an ingested Parquet dataset (Ray Train + MLflow)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset directory written by `alexnet ingest` (sets data.path)")
    p.add_argument("--recipe", help="required: a shipped recipe (paper, torchvision, demo, or smoke: a 2-epoch "
                                    "installation check) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.epochs=5 (repeatable)")
    p.add_argument("--workdir", default="alexnet-work", help="checkpoints and the default MLflow store (default: ./alexnet-work)")
    p.add_argument("--storage", help="where checkpoints go (Ray Train's storage path): a URI such as s3://bucket/runs, "
                                     "or a folder (default: WORKDIR/runs); on a cluster of several nodes a URI, or a "
                                     "folder on a network filesystem every node mounts")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in WORKDIR)")
    p.add_argument("--experiment", default="alexnet", help="MLflow experiment name")
    p.add_argument("--run-name", help="Ray/MLflow run name; the same name resumes that run's checkpoints")
    p.add_argument("--resume-from", help="start from this checkpoint (a directory or storage URI) at its next epoch; "
                                         "ignored when --run-name already has checkpoints of its own")
    p.add_argument("--trigger", default="manual", choices=("manual", "schedule", "new-data"),
                   help="why this run happened (an MLflow tag)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow run tag (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.config import load_config, recipe_path, shipped_recipes
    from alexnet.run import new_run_name, run_training
    from jobs.output import ui_hint
    from jobs.runtime import Workdir, run_session

    if not args.recipe:
        raise UserError(f"--recipe is required: a shipped recipe ({', '.join(shipped_recipes())}) or a YAML file; "
                        "`torchvision` and `paper` are the full ImageNet recipes, `smoke` a 2-epoch installation check")
    work = Workdir.at(args.workdir)  # made once run_training has checked the inputs
    storage = absolute(args.storage or str(work.runs))
    resume_from = absolute(args.resume_from) if args.resume_from else None
    data = absolute(args.data) if args.data else None
    tags = {"trigger": args.trigger, **parse_pairs(args.tag, "--tag")}
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        tags["ray.job_submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
    cfg = load_config(args.recipe, ([f"data.path={data}"] if data else []) + list(args.overrides))
    print(f"recipe: {args.recipe} ({recipe_path(args.recipe)})" + (f", overrides: {' '.join(args.overrides)}"
                                                                   if args.overrides else ""), flush=True)
    result = run_training(
        cfg, tracking_uri=args.tracking_uri or work.tracking_uri, storage=storage,
        run_name=args.run_name or new_run_name("train"), model_dir=work.root / "models", experiment=args.experiment,
        artifact_location=None if args.tracking_uri else work.artifacts, tags=tags, resume_from=resume_from,
        source="alexnet train", ray_session=lambda: run_session(work))
    print(f"MLflow run id: {result.run_id}  run name: {result.run_name}")
    print(f"best epoch: {result.best_epoch + 1} of {result.epochs}, val top-1 {result.val_top1:.4f}; "
          f"checkpoint {result.checkpoint}")
    print(f"model: {result.model_uri} {result.registered}")
    print(f"open the MLflow UI: {ui_hint(workdir=work.root, tracking_uri=args.tracking_uri)}")
    return 0


