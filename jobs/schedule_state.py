"""The scheduler's durable state and one tick of I/O around `jobs.schedule.decide`.

State is one JSON file (default: next to the schedule file, `<name>.state.json`), replaced
atomically (temp file + fsync + os.replace) and guarded by an flock, so a `schedule run` loop
and a `schedule tick` from cron never interleave. Each tick saves the decided state *before*
submitting (records marked SUBMITTING) and again after, so a crash in between resubmits the
same submission id, which the cluster refuses as a duplicate: no slot is missed or doubled.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from jobs import schedule as sch
from pipelines.errors import UserError

STATE_VERSION = 1


def default_state_path(schedule_file: str | Path) -> Path:
    p = Path(schedule_file)
    return p.with_name(p.stem + ".state.json")


def load_state(path: Path) -> dict[str, sch.ScheduleState]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {name: sch.ScheduleState(**{**s, "jobs": [sch.JobRecord(**j) for j in s.get("jobs", [])]})
                for name, s in raw["schedules"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--state {path}: unreadable scheduler state ({err}); move it away to start afresh") from None


def save_state(path: Path, states: dict[str, sch.ScheduleState]) -> None:
    from pipelines.atomic import write_atomic

    data = {"version": STATE_VERSION, "schedules": {n: dataclasses.asdict(s) for n, s in states.items()}}
    write_atomic(path, json.dumps(data, indent=2))


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_data(s: sch.Schedule) -> tuple[sch.DataFacts | None, str]:
    """The watched dataset's version and image count, from its dataset.json."""
    if not s.data:
        return None, "no job.data"
    from pipelines.dataset import load_info

    try:
        info = load_info(s.data)
    except UserError as err:
        return None, str(err)
    return sch.DataFacts(info.version, info.num_images), ""


def read_metric(s: sch.Schedule, st: sch.ScheduleState) -> tuple[float | None, str]:
    """The champion's metric from `metric_file` (flat JSON or under "metrics"), ignored when the
    file is not newer than the last successful retrain (it would describe the old champion)."""
    path = Path(s.trigger.metric_file)
    try:
        raw = json.loads(path.read_text())
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    except (OSError, ValueError) as err:
        return None, f"{path}: {getattr(err, 'strerror', None) or err}"
    value = raw.get(s.trigger.metric, (raw.get("metrics") or {}).get(s.trigger.metric))
    if not isinstance(value, (int, float)):
        return None, f"{path}: no numeric {s.trigger.metric!r}"
    if st.last_success_at and mtime <= sch.parse_iso(st.last_success_at):
        return None, f"{path} not updated since the last successful run"
    return float(value), ""


def tick(schedules: list[sch.Schedule], state_path: Path, now: dt.datetime, connect=None,
         environ=os.environ) -> list[str]:
    """One pass over all schedules; returns the lines to print. `connect(address)` gives a
    JobSubmissionClient (injected by tests); an unreachable cluster leaves that schedule's state
    untouched, so its slot is handled on the next tick that reaches it."""
    from jobs import submit as js

    connect = connect or js.connect
    lines = []
    with locked(state_path):
        states = load_state(state_path)
        for s in schedules:
            st = states.get(s.name, sch.ScheduleState())
            try:
                client = connect(s.address)
                statuses = {r.submission_id: js.job_status(client, r.submission_id)
                            for r in st.jobs if r.status in sch.ACTIVE}
            except (UserError, RuntimeError) as err:
                lines.append(f"{s.name}: {err}")
                continue
            data, error = read_data(s) if s.trigger.kind in ("new-version", "new-images") else (None, "")
            metric = None
            if s.trigger.kind == "metric-below":
                metric, error = read_metric(s, st)
            decision = sch.decide(s, st, now, statuses, data, metric, error)
            states[s.name] = decision.state
            save_state(state_path, states)  # the slot is taken before the job exists (see module doc)
            lines += [f"{s.name}: {note}" for note in decision.notes]
            for rec in decision.submits:
                lines.append(f"{s.name}: {submit_record(s, rec, client, now, environ)}")
                save_state(state_path, states)
    return lines


def submit_record(s: sch.Schedule, rec: sch.JobRecord, client, now: dt.datetime, environ=os.environ) -> str:
    from jobs import submit as js

    args, extra = sch.job_args(s, rec)
    try:
        spec = js.build_spec(s.command, args, env=dict(s.env), submission_id=rec.submission_id, environ=environ,
                             metadata={"schedule": s.name, "slot": rec.slot, "attempt": rec.attempt,
                                       "trigger_reason": rec.reason}, **extra)
        js.submit(client, spec)
        rec.status = "PENDING"
        return f"submitted {rec.submission_id}"
    except js.JobExists:
        rec.status = "PENDING"  # a previous tick got it there; its status is read on the next tick
        return f"{rec.submission_id} already on the cluster; counted as submitted"
    except (UserError, RuntimeError, OSError) as err:
        return f"submit failed: {sch.mark_failed(s, rec, now, 'FAILED', str(err).splitlines()[0][:200])}"


def status_lines(schedules: list[sch.Schedule], state_path: Path, now: dt.datetime) -> list[str]:
    states = load_state(state_path)
    lines = []
    for s in schedules:
        st = states.get(s.name, sch.ScheduleState())
        nxt = sch.next_slot(s, now)
        lines.append(f"{s.name}: '{s.cron}' {s.time_zone}, trigger {s.trigger.kind}, {s.command}")
        lines.append(f"  next run:  {nxt.isoformat(timespec='minutes')}")
        lines.append(f"  last slot: {st.last_slot or 'never'}")
        lines.append(f"  outcome:   {st.last_outcome or '-'}")
        if st.jobs:
            last = st.jobs[-1]
            retry = f", retry at {last.retry_at}" if last.retry_at else ""
            lines.append(f"  last job:  {last.submission_id} {last.status}{retry} (as of the last tick)")
        if st.last_success_at:
            lines.append(f"  last success: {st.last_success_at} (dataset {st.last_success_version or '-'})")
    return lines
