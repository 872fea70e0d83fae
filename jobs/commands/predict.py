"""`alexnet predict`: a registered model over a Parquet dataset or an image folder -> Parquet.

Ray Data decodes and centre-crops the images like the val split (the crop and resize are
stored in the model) and a pool of actors (one GPU each where there are GPUs) predicts. The
output directory has one row per image: id, source, label and label_name (when known), pred,
pred_name, prob, topk, topk_names, topk_probs, error (why an image could not be read). It is
written to a temporary directory and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from jobs.runtime import add_store_options

    p = sub.add_parser("predict", help="batch prediction with a registered model (Ray Data) -> Parquet",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models:/alexnet@champion", help="MLflow model URI (default: models:/alexnet@champion)")
    p.add_argument("--data", required=True, help="dataset directory from `alexnet ingest`, or a folder of images")
    p.add_argument("--out", required=True, help="output directory for the Parquet predictions (must not exist or be empty)")
    p.add_argument("--split", choices=("train", "val"), help="with a dataset directory: only this split (default: all)")
    p.add_argument("--top-k", type=int, default=5, help="predictions kept per image (default 5)")
    p.add_argument("--concurrency", type=int, help="model actors (default: one per GPU, else 1)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    add_store_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.serve.predict import geometry, predict_dataset, read_images, scores, write_predictions
    from alexnet.track.models import load_model
    from jobs.runtime import existing_store, ray_session
    from pipelines.errors import UserError

    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    tracking_uri = existing_store(args)
    model = load_model(args.model, tracking_uri, label=f"--model {args.model}")
    crop, resize = geometry(model)
    with ray_session():
        images = read_images(args.data, model, split=args.split, crop=crop, resize=resize)
        preds = predict_dataset(images, model, top_k=args.top_k, batch_size=args.batch_size,
                                concurrency=args.concurrency)
        table = write_predictions(preds, args.out)
    s = scores(table)
    errors = sum(1 for e in table.column("error").to_pylist() if e)
    print(f"{args.out}: {table.num_rows} predictions from {args.model}" + (f", {errors} unreadable images" if errors else ""))
    if s.images:
        print(f"top-1 {s.top1:.4f}  top-5 {s.top5:.4f}  on {s.images} labelled images")
    return 0
