"""`alexnet demo`: the whole path on built-in data, locally, in a few minutes on 2 CPU cores.

Generated shape images -> `alexnet ingest`'s code -> Ray Data augmentation -> TorchTrainer on a
local Ray -> MLflow (SQLite) run with a registered model. A second run in the same work
directory reuses the dataset (no new shards) and adds a new, separately named MLflow run.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a built-in dataset, locally",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="alexnet-demo",
                   help="where data, checkpoints and the MLflow store go (default: ./alexnet-demo, apart from "
                        "./alexnet-work, so the demo's model never answers for your own)")
    p.add_argument("--epochs", type=int, help="override the demo recipe's epochs")
    p.add_argument("--workers", type=int, help="train workers (default 1; 2 works on 2 cores, just slower)")
    p.add_argument("--images-per-class", type=int, help="size of the generated dataset (default 250 per class)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.002")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.demo import run_demo
    from jobs.output import ui_hint
    from jobs.runtime import prepare_workdir, ray_session

    work = prepare_workdir(args.workdir)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.workers is not None:
        overrides.append(f"run.num_workers={args.workers}")
    size = {"images_per_class": args.images_per_class} if args.images_per_class else {}
    _, result = run_demo(work, overrides=overrides, ray_session=ray_session, **size)
    print()
    print(f"MLflow run id:      {result.run_id}  (run name {result.run_name})")
    print(f"best epoch:         {result.best_epoch + 1} of {result.epochs}, val top-1 {result.val_top1:.3f} "
          f"(chance {result.chance:.3f})")
    print(f"best checkpoint:    {result.checkpoint}")
    print(f"model:              {result.model_uri}" + (f"  registered as {result.registered}" if result.registered else ""))
    print(f"open the MLflow UI: {ui_hint(workdir=work.root)}")
    return 0
