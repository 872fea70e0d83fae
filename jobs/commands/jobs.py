"""`alexnet jobs list|status ID|logs ID [--follow]|stop ID`: the jobs on a Ray cluster.

The address is --address, else $RAY_ADDRESS; a token-authenticated cluster gets Ray's token
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). `status` exits with the job's outcome
code (SUCCEEDED 0, FAILED 1, STOPPED 3, still PENDING/RUNNING 0); `stop` waits until the job is
STOPPED. Entrypoints are printed with credentials masked.
"""

from __future__ import annotations

import argparse
import datetime
import sys

STOP_WAIT_S = 90.0  # a stopped driver gets RAY_JOB_STOP_WAIT_TIME_S (30 s) to end its runs, then SIGKILL


def add_parser(sub) -> None:
    p = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("list", "all jobs, newest first"), ("status", "one job's status and metadata"),
                            ("logs", "one job's log"), ("stop", "stop a job and wait until it is STOPPED")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--address", help="job server, http://HEAD:8265 (default: $RAY_ADDRESS)")
        if name != "list":
            a.add_argument("id", help="submission id")
        if name == "logs":
            a.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    p.set_defaults(func=run)


def _when(ms) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def run(args) -> int:
    from pipelines.redaction import redact
    from jobs import cluster
    from jobs import submit as js
    from pipelines.errors import UserError

    client = cluster.connect(args.address)
    if args.action == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
        for j in jobs:
            ident = j.submission_id or j.job_id
            print(f"{ident:<48} {str(j.status.value):<10} {_when(j.start_time)}  "
                  f"{redact(j.entrypoint or '')[:80]}")
        if not jobs:
            print("no jobs")
        return 0
    info = cluster.job_info(client, args.id)
    if args.action == "status":
        status = str(info.status.value)
        print(f"{args.id}: {status}  started {_when(info.start_time)}  ended {_when(info.end_time)}")
        if info.message:
            print(f"  message: {redact(info.message.strip().splitlines()[0][:300])}")
        print(f"  entrypoint: {redact(info.entrypoint or '')}")
        for key, value in sorted((info.metadata or {}).items()):
            print(f"  {key}: {redact(value, key)}")
        return js.EXIT_CODES.get(status, 0)
    if args.action == "logs":
        if args.follow:
            cluster.follow(client, args.id)
        else:
            sys.stdout.write(client.get_job_logs(args.id))
        return 0
    if str(info.status.value) in cluster.TERMINAL:
        raise UserError(f"job {args.id}: already {info.status.value}, nothing to stop")
    client.stop_job(args.id)
    status = cluster.wait_terminal(client, args.id, timeout_s=STOP_WAIT_S)
    print(js.outcome_line(client, args.id, status))
    return 0 if status == "STOPPED" else 1
