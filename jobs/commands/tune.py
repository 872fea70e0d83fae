"""`alexnet tune`: search hyperparameters with Ray Tune, every trial the real training run.

The space is a YAML file of config keys and distributions (docs/tune.md), e.g.

    optim.lr: loguniform(1e-4, 1e-2)
    model.dropout: uniform(0.2, 0.6)
    optim.batch_size: choice(64, 128, 256)

Each trial is an `alexnet train` run (Ray Train, same data pipeline and checkpoints) and a child
MLflow run of the sweep's run; ASHA stops the weak trials after each rung of epochs. The best
trial's model is registered by the champion rule. An interrupted sweep continues with
`alexnet tune --resume FOLDER` (the folder is printed at start), with the same --workdir or
--tracking-uri.
"""

from __future__ import annotations

import argparse
import os

from jobs.commands import parse_pairs
from pipelines.errors import UserError
from pipelines.storage import absolute


# alexnet.sweep.run.SweepOptions' fields: a new sweep takes each one given, else the field's default.
# Named here (and the --trials default in its help), not read from SweepOptions: the CLI imports
# alexnet.sweep, Ray Tune with it, only once a sweep runs. tests/sweep/test_space.py keeps them equal.
SWEEP_OPTIONS = ("trials", "scheduler", "max_concurrent", "seed")


def asked_options(args) -> list[tuple[str, object]]:
    """The options that shape a sweep, as given: --resume refuses each one set (its sweep keeps
    what it was first asked; a changed copy is a new sweep, with --name)."""
    return [("--recipe", args.recipe), ("--space", args.space), ("--data", args.data), ("--set", args.overrides),
            ("--name", args.name), ("--trials", args.trials), ("--scheduler", args.scheduler),
            ("--max-concurrent", args.max_concurrent), ("--seed", args.seed), ("--storage", args.storage),
            ("--experiment", args.experiment)]


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune (each trial a training run, in MLflow)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset directory written by `alexnet ingest` (sets data.path)")
    p.add_argument("--recipe", help="required (unless --resume): a shipped recipe or a YAML file; the space's values go on top")
    p.add_argument("--space", help="required (unless --resume): YAML file of config keys and distributions")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every trial, e.g. --set optim.epochs=12 (repeatable)")
    # The options that shape a sweep default to None here, so that --resume, which continues a
    # sweep as it was asked, can tell one the user gave (refused) from one left out.
    p.add_argument("--trials", type=int, help="trials drawn from the space (default: 8)")
    p.add_argument("--scheduler", choices=("asha", "none"),
                   help="asha: stop weak trials after each rung of epochs (default); none: run every trial to the end")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: as many as the cluster's GPUs hold, or one per 4 CPUs)")
    p.add_argument("--seed", type=int, help="the search's seed: the same seed draws the same trials (default: 0)")
    p.add_argument("--name", help="the sweep's name: its MLflow run and its folder under the storage")
    p.add_argument("--resume", metavar="FOLDER", help="continue the sweep in FOLDER (printed at its start); "
                                                    "finished trials are not run again")
    p.add_argument("--workdir", default="alexnet-work", help="checkpoints and the default MLflow store (default: ./alexnet-work)")
    p.add_argument("--storage", help="where the sweep's state and the trials' checkpoints go (default: WORKDIR/runs); "
                                     "on a cluster of several nodes a URI or a shared folder")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in WORKDIR)")
    p.add_argument("--experiment", help="MLflow experiment name (default: alexnet)")
    p.add_argument("--trigger", default="manual", choices=("manual", "schedule", "new-data"),
                   help="why this sweep happened (an MLflow tag)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow run tag (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.config import load_config
    from alexnet.run import new_run_name
    from alexnet.sweep.run import SweepOptions, read_asked, run_sweep
    from alexnet.sweep.view import params_text
    from alexnet.sweep.space import load_space
    from jobs.output import ui_hint, verbose
    from jobs.runtime import Workdir, run_session

    # Ctrl-C and SIGTERM stop a sweep as they stop `alexnet train` (a KeyboardInterrupt: runs
    # marked KILLED, Ray shut down); Tune's own handler would end the sweep as if it had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if not verbose():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's tables: with verbose=0, nothing
    work = Workdir.at(args.workdir)
    storage = absolute(args.storage or str(work.runs))
    tags = {"trigger": args.trigger, **parse_pairs(args.tag, "--tag")}
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        tags["ray.job_submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
    if args.resume:
        given = [option for option, value in asked_options(args) if value not in (None, [])]
        if given:
            raise UserError(f"--resume continues a sweep as it was asked; {', '.join(given)} cannot change it")
        folder = absolute(args.resume)
        base, space, options, name, experiment = read_asked(folder)
        storage = folder.rstrip("/").rsplit("/", 1)[0]
        source = f"--resume {folder}"
    else:
        if not args.recipe or not args.space:
            raise UserError("--recipe and --space are required (or --resume FOLDER to continue a sweep)")
        data = absolute(args.data) if args.data else None
        base = load_config(args.recipe, ([f"data.path={data}"] if data else []) + list(args.overrides))
        space = load_space(args.space)
        options = SweepOptions(**{key: getattr(args, key) for key in SWEEP_OPTIONS if getattr(args, key) is not None})
        name, experiment, source = args.name or new_run_name("tune"), args.experiment or "alexnet", f"--space {args.space}"
    result = run_sweep(
        base, space, options, name=name, tracking_uri=args.tracking_uri or work.tracking_uri, storage=storage,
        model_dir=work.root / "models", experiment=experiment,
        artifact_location=None if args.tracking_uri else work.artifacts, tags=tags, resume=bool(args.resume),
        space_source=source, ray_session=lambda: run_session(work))
    best = result.best
    print(f"best trial: {best.trial_id}  val top-1 {best.best_top1:.4f}  "
          + params_text(best.params) + f"  (MLflow run {result.best_run_id})")
    print(f"MLflow sweep run id: {result.run_id}  run name: {result.name}")
    print(f"open the MLflow UI: {ui_hint(workdir=work.root, tracking_uri=args.tracking_uri)}")
    return 0
