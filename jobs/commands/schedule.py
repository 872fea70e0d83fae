"""`alexnet schedule run|tick|status --file SCHEDULES.yaml`: scheduled retraining on a Ray cluster.

`tick` handles what is due now once and exits (for cron or a Kubernetes CronJob); `run` ticks in a
loop until Ctrl-C; `status` prints each schedule's next run, last slot and outcome. State lives in
--state (default: SCHEDULES.state.json next to the file); a missed slot runs once when the
scheduler is back (the most recent one only). A cluster that does not answer, or refuses the
token, is recorded in the state and tried again at the next tick; `run` keeps going.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import traceback
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("schedule", help="run scheduled (re)training jobs from a schedule file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("run", "tick in a loop until interrupted"), ("tick", "handle what is due now, once"),
                            ("status", "next run, last run and outcome of each schedule")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--file", required=True, help="schedule file (YAML)")
        a.add_argument("--state", help="state file (default: <file stem>.state.json next to --file)")
        a.add_argument("--now", help="act as if it were this ISO time (replays and tests), e.g. 2026-01-05T02:00:00+00:00")
        if name != "status":
            a.add_argument("--agent-wait", type=float, default=None, metavar="SECONDS",
                           help="how long a submit waits for the head's job agent to be ready (default 60); "
                                "a slot it times out on is sent again by the next tick")
        if name == "run":
            a.add_argument("--interval", type=float, default=30.0, help="seconds between ticks (default 30)")
    p.set_defaults(func=run)


def _now(text: str | None) -> dt.datetime:
    from pipelines.errors import UserError

    if not text:
        return dt.datetime.now(dt.timezone.utc)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--now {text!r}: expected an ISO time like 2026-01-05T02:00:00+00:00") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def run(args) -> int:
    from jobs.cluster import AGENT_WAIT_S
    from jobs.schedule import load_schedules
    from jobs.schedule_state import default_state_path, status_lines, tick
    from pipelines.errors import UserError

    schedules = load_schedules(args.file)
    state = Path(args.state) if args.state else default_state_path(args.file)
    if args.action == "status":
        print("\n".join(status_lines(schedules, state, _now(args.now))))
        return 0
    agent_wait_s = AGENT_WAIT_S if args.agent_wait is None else args.agent_wait
    if args.action == "tick":
        print("\n".join(tick(schedules, state, _now(args.now), agent_wait_s=agent_wait_s)) or "nothing due",
              flush=True)
        return 0
    while True:  # `run`: re-read the file each time so edits apply; a broken edit keeps the last good one
        try:
            schedules = load_schedules(args.file)
        except UserError as err:
            print(f"schedule file not reloaded: {err}", flush=True)
        try:
            lines = tick(schedules, state, _now(args.now), agent_wait_s=agent_wait_s)
        except UserError as err:  # e.g. an unreadable state file: said each tick until fixed
            lines = [f"tick failed: {err}"]
        except Exception:  # a bug: its traceback, and the loop goes on (the next tick retries)
            traceback.print_exc(file=sys.stderr)
            lines = ["tick failed with the error above; the next tick tries again"]
        for line in lines:
            print(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {line}", flush=True)
        time.sleep(args.interval)
