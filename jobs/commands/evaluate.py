"""`alexnet evaluate`: top-1/top-5 of a model on a dataset's val split, logged to MLflow.

The results go into a new MLflow run tagged `evaluation` (experiment `alexnet-evaluation`),
or into an existing run with --log-to RUN_ID, or nowhere with --no-log. The last line printed
is machine-readable: EVAL {"top1": ..., "top5": ..., "images": ..., ...}.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from jobs.runtime import add_store_options

    p = sub.add_parser("evaluate", help="top-1/top-5 of a model on a dataset's val split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models:/alexnet@champion", help="MLflow model URI (default: models:/alexnet@champion)")
    p.add_argument("--data", required=True, help="dataset directory written by `alexnet ingest`")
    p.add_argument("--ten-crop", action="store_true", help="average the logits of 10 crops (corners, centre, mirrored)")
    p.add_argument("--concurrency", type=int, help="model actors (default: one per GPU, else 1)")
    log = p.add_mutually_exclusive_group()
    log.add_argument("--log-to", metavar="RUN_ID", help="log the results into this existing MLflow run")
    log.add_argument("--no-log", action="store_true", help="only print the results")
    p.add_argument("--experiment", default="alexnet-evaluation", help="experiment of the new evaluation run")
    p.add_argument("--metric-file", help="also write the results as JSON here (atomically), e.g. for a schedule's "
                                         "metric-below trigger: {\"metrics\": {\"val/top1\": ..., \"val/top5\": ...}, ...}")
    add_store_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from alexnet.serve.predict import evaluate
    from alexnet.track.models import load_model
    from alexnet.run import new_run_name
    from alexnet.track.tracking import client_for, log_params, tracked_run
    from jobs.runtime import existing_store, ray_session
    from pipelines.dataset import open_dataset

    tracking_uri = existing_store(args)
    info = open_dataset(args.data)
    if args.log_to:
        check_run(tracking_uri, args.log_to)  # a wrong id fails now, not after the evaluation
    model = load_model(args.model, tracking_uri, label=f"--model {args.model}")
    with ray_session():
        s, _, _ = evaluate(model, info, ten_crop=args.ten_crop, concurrency=args.concurrency)
    metrics = {"eval/top1": s.top1, "eval/top5": s.top5, "eval/images": s.images}
    result = {"top1": s.top1, "top5": s.top5, "images": s.images, "model": args.model,
              "dataset_version": info.version, "ten_crop": args.ten_crop}
    print(f"{args.model} on {info.path} (val, {s.images} images{', 10-crop' if args.ten_crop else ''}): "
          f"top-1 {s.top1:.4f}  top-5 {s.top5:.4f}")
    if args.log_to:
        for key, value in metrics.items():
            client_for(tracking_uri).log_metric(args.log_to, key, value)
        result["run_id"] = args.log_to
    elif not args.no_log:
        with tracked_run(tracking_uri, experiment=args.experiment, run_name=new_run_name("eval"),
                         tags={"evaluation": "true", "trigger": "manual"}) as run_id:
            log_params(tracking_uri, run_id, {"model": args.model, "dataset.path": info.path,
                                              "dataset.version": info.version, "ten_crop": args.ten_crop})
            for key, value in metrics.items():
                client_for(tracking_uri).log_metric(run_id, key, value)
        result["run_id"] = run_id
    if args.metric_file:
        write_metric_file(args.metric_file, {**result, "metrics": {"val/top1": s.top1, "val/top5": s.top5}})
    print("EVAL " + json.dumps(result), flush=True)
    return 0


def check_run(tracking_uri: str, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    from alexnet.track.tracking import client_for
    from pipelines.errors import UserError

    try:
        client_for(tracking_uri).get_run(run_id)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise UserError(f"--log-to {run_id}: no such MLflow run in {tracking_uri}") from None


def write_metric_file(path: str, payload: dict) -> None:
    """Atomically: the scheduler never reads a half-written file."""
    import json
    from pathlib import Path

    from pipelines.atomic import write_atomic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(payload, indent=2))
