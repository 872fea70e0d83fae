"""`alexnet submit COMMAND [options] -- ARGS`: run a project command as a Ray job on a cluster.

ARGS after `--` go to `python -m jobs.cli COMMAND` unchanged, e.g.
  alexnet submit train --address http://HEAD:8265 --recipe smoke --wait -- --data /mnt/data/shapes
The project directory is uploaded as the job's working_dir; the MLflow/AWS settings set here that
are not secret (tracking URI, experiment, region, endpoints) travel in the job's runtime env.
Passwords, tokens and keys never do (Ray's job table shows a job's command line and environment):
the job uses its node's credentials, and an argument holding one is refused. A token-authenticated cluster gets Ray's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
or ~/.ray/auth_token. With --wait the log streams here until the job ends, however long it runs
and across dropped connections, and the exit code is the job's: SUCCEEDED 0, FAILED 1, STOPPED 3.
"""

from __future__ import annotations

import argparse
import sys

from jobs.commands import parse_pairs


def _options(p) -> None:
    p.add_argument("--address", help="job server, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--recipe", help="train/tune only: shipped recipe name or a YAML file under the project directory")
    p.add_argument("--run-name", help="train/tune only: Ray/MLflow run name, or the sweep's --name (default: COMMAND-<time>)")
    p.add_argument("--trigger", choices=("manual", "schedule", "new-data"), help="train/tune only: why (an MLflow tag; default manual)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="train/tune only: extra MLflow run tag (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment variable for the job (repeatable; never a secret)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ", help="extra pip requirement for this job (repeatable)")
    p.add_argument("--submission-id", help="job id (default: alexnet-COMMAND-RUNNAME-<hash>); an existing id is refused")
    p.add_argument("--wait", action="store_true", help="stream the log until the job ends; exit with its outcome")
    p.add_argument("--agent-wait", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the head's job agent to be ready (default 60; a fresh head "
                        "needs 5-20 s)")


def add_parser(sub) -> None:
    from jobs.submit import COMMANDS

    p = sub.add_parser("submit", help="submit train/tune/ingest/predict/evaluate as a job to a Ray cluster",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _options(p)
    p.add_argument("job", choices=COMMANDS, help="the project command the job runs")
    # argparse cannot mix subcommands with `--`; the options after COMMAND are parsed in run().
    p.add_argument("rest", nargs=argparse.REMAINDER, help="[options] -- the arguments of the command")
    p.set_defaults(func=run)


def split_rest(args) -> list[str]:
    """Parse submit options given after COMMAND into args; return what follows `--`."""
    rest = list(args.rest)
    inner = argparse.ArgumentParser(prog=f"alexnet submit {args.job}")
    _options(inner)
    if "--" in rest:
        cut = rest.index("--")
        inner.parse_args(rest[:cut], namespace=args)
        return rest[cut + 1:]
    # argparse already dropped a `--` that came right after COMMAND: all of rest is passthrough
    # unless it starts with our own options.
    _, passthrough = inner.parse_known_args(rest, namespace=args)
    return passthrough


def run(args) -> int:
    from jobs import cluster
    from jobs import submit as js
    from pipelines.errors import UserError

    rest = split_rest(args)
    spec = js.build_spec(args.job, rest, recipe=args.recipe, run_name=args.run_name, trigger=args.trigger,
                         tags=parse_pairs(args.tag, "--tag"), env=parse_pairs(args.env, "--env"), pip=args.pip,
                         submission_id=args.submission_id)
    client = cluster.connect(args.address)
    print(js.describe(spec, cluster.resolve_address(args.address)), flush=True)
    try:
        job_id = js.submit(client, spec, cluster.AGENT_WAIT_S if args.agent_wait is None else args.agent_wait)
    except js.JobExists:
        raise UserError(f"--submission-id {spec.submission_id}: a job with this id already exists") from None
    except cluster.Unreachable as err:  # the request may have landed before the answer was lost
        raise cluster.Unreachable(f"{err}; the job may have been submitted: alexnet jobs status "
                                  f"{spec.submission_id}") from None
    print(f"submitted {job_id}; follow with: alexnet jobs logs {job_id} --follow", flush=True)
    if not args.wait:
        return 0
    status = cluster.follow(client, job_id)
    line = js.outcome_line(client, job_id, status)
    print(line, file=sys.stderr if status != "SUCCEEDED" else sys.stdout)
    return js.EXIT_CODES.get(status, 1)
