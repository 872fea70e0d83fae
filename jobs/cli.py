"""`alexnet` console script: one subcommand per module, looked up in one table.

Each module in COMMANDS has `add_parser(subparsers)`, which adds its parser and sets
`func=run`, where `run(args) -> int` is the exit code. A `UserError` anywhere below becomes
one line on stderr and exit code 2, and so does a tracking store that does not answer, refuses
access or cannot be opened; Ctrl-C exits 130 after the command's own cleanup ran. Anything else
is a bug and keeps its traceback. `--verbose` (before or after the subcommand) shows Ray's and
MLflow's own logs on the terminal; by default they go to files (jobs/output.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from jobs.runtime import configure_mlflow_client
from pipelines.errors import UserError

VERBOSE_HELP = "also show Ray's and MLflow's own logs (by default they go to the Ray session's logs folder)"

# Adding a subcommand is one entry here (module path under jobs/).
COMMANDS = (
    "jobs.commands.demo",
    "jobs.commands.ingest",
    "jobs.commands.train",
    "jobs.commands.tune",
    "jobs.commands.predict",
    "jobs.commands.evaluate",
    "jobs.commands.promote",
    "jobs.commands.register",
    "jobs.commands.ui",
    "jobs.commands.submit", "jobs.commands.jobs", "jobs.commands.schedule",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="Image dataset -> Parquet -> Ray Data -> Ray Train AlexNet -> MLflow.",
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():  # also after the subcommand, as in `alexnet train ... --verbose`
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jobs import output

    with output.redacted_output():  # argparse's own errors echo arguments too
        args = build_parser().parse_args(argv)
        output.set_verbose(args.verbose)
        configure_mlflow_client()  # every command's MLflow calls fail in seconds, not minutes, on a dead server
        if not args.verbose:  # MLflow's download bars (a model loaded for predict/evaluate) are its own output
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return _run(args)


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        message = tracking_problem(err, args)
        if message is None:
            raise
        print(f"alexnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


def tracking_problem(err: Exception, args) -> str | None:
    """One line for a store the user must start, fix or get access to; None for anything else."""
    from alexnet.track.tracking import explain, problem  # deferred: MLflow is slow to import

    if problem(err) is None:
        return None
    return explain(err, getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or "the tracking store")


if __name__ == "__main__":
    sys.exit(main())
