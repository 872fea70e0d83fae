"""`alexnet demo`: the whole path on built-in data, locally, in about a minute and a half on 2 CPU cores.

Generated shape images -> `alexnet ingest`'s code -> Ray Data augmentation -> TorchTrainer on a
local Ray -> MLflow (SQLite) run with a registered model. A second run in the same work
directory reuses the dataset (no new shards) and adds a new, separately named MLflow run.
"""

from __future__ import annotations

import argparse

DEMO_CLASSES_PER = 250  # images per class; 6 classes


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a built-in dataset, locally",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="alexnet-work", help="where data, checkpoints and the MLflow store go (default: ./alexnet-work)")
    p.add_argument("--epochs", type=int, help="override the demo recipe's epochs")
    p.add_argument("--workers", type=int, help="train workers (default 1; 2 works on 2 cores, just slower)")
    p.add_argument("--images-per-class", type=int, default=DEMO_CLASSES_PER, help="size of the generated dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.002")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.config import load_config
    from jobs.output import ui_hint
    from jobs.runtime import prepare_workdir, ray_session
    from alexnet.run import new_run_name, run_training
    from pipelines.ingest import IngestOptions, ingest
    from pipelines.synthetic import write_demo_images

    work = prepare_workdir(args.workdir)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.workers is not None:
        overrides.append(f"run.num_workers={args.workers}")
    name = f"hue-shapes-{args.images_per_class}"  # a new generator or size is a new source and dataset
    dataset_dir = work.datasets / name
    cfg = load_config("demo", [f"data.path={dataset_dir}", *overrides])

    source = work.root / "demo-images" / name
    if not source.is_dir():
        tmp = source.with_name(source.name + ".tmp")
        write_demo_images(tmp, per_class=args.images_per_class, size=cfg.data.resize, class_hues=True)
        tmp.rename(source)

    with ray_session():
        summary = ingest(source, dataset_dir, IngestOptions(resize=cfg.data.resize, val_fraction=0.2, image_format="jpeg"))
        print(f"dataset {dataset_dir} version {summary.version}: {summary.added} images added, "
              f"{summary.already_present} already present, {len(summary.rejects)} rejected", flush=True)
        report = run_training(cfg, tracking_uri=work.tracking_uri, storage=str(work.runs),
                              run_name=new_run_name("demo"), model_dir=work.root / "models",
                              experiment="alexnet-demo", artifact_location=work.artifacts, source="alexnet demo")
    print()
    print(f"MLflow run id:      {report.run_id}  (run name {report.run_name})")
    print(f"best epoch:         {report.best_epoch + 1} of {report.epochs}, val top-1 {report.val_top1:.3f} "
          f"(chance {report.chance:.3f})")
    print(f"best checkpoint:    {report.checkpoint}")
    print(f"model:              {report.model_uri}" + (f"  registered as {report.registered}" if report.registered else ""))
    print(f"open the MLflow UI: {ui_hint(workdir=work.root)}")
    return 0
