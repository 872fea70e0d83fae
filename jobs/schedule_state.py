"""The scheduler's durable state and one tick of I/O around `jobs.schedule.plan_tick`.

State is one JSON file (default: next to the schedule file, `<name>.state.json`), replaced
atomically (temp file + fsync + os.replace) and guarded by an flock, so a `schedule run` loop
and a `schedule tick` from cron never interleave; a tick that finds the lock held for LOCK_WAIT_S
does nothing (the holder handles what is due) instead of queueing behind it. Each tick saves the
decided state *before* submitting (records marked SUBMITTING) and again after, so a crash in
between resubmits the same submission id, which the cluster refuses as a duplicate: no slot is
missed or doubled. Every call to the cluster has a timeout (jobs.cluster); a call that fails is
recorded in the schedule's state (`last_error`) and the next tick tries again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pipelines.atomic import open_lock_file
from pipelines.redaction import redact
from jobs import schedule as sch
from pipelines.errors import UserError, first_line

STATE_VERSION = 1
LOCK_WAIT_S = 10.0  # a tick waits this long for another tick to finish, then does nothing


class StateBusy(UserError):
    """Another tick holds the state's lock."""


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
def locked(path: Path, wait_s: float = LOCK_WAIT_S):
    """The state's exclusive lock, or StateBusy after `wait_s`: ticks never queue up behind a slow one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with os.fdopen(open_lock_file(lock_path), "r+b") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateBusy(f"{lock_path} is held by another tick; this one does nothing "
                                    f"(that tick handles what is due)") from None
                time.sleep(0.2)
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
    except (UserError, OSError) as err:  # a missing dataset, or its store failing this time
        return None, first_line(err)
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
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics") or {}, dict):
        return None, f"{path}: expected a JSON object, flat or with the metric under \"metrics\""
    value = raw.get(s.trigger.metric, (raw.get("metrics") or {}).get(s.trigger.metric))
    if not isinstance(value, (int, float)):
        return None, f"{path}: no numeric {s.trigger.metric!r}"
    if st.last_success_at and mtime <= sch.parse_iso(st.last_success_at):
        return None, f"{path} not updated since the last successful run"
    return float(value), ""


def tick(schedules: list[sch.Schedule], state_path: Path, now: dt.datetime, connect=None,
         environ=os.environ, agent_wait_s: float | None = None) -> list[str]:
    """One pass over all schedules; returns the lines to print. `connect(address)` gives a
    JobSubmissionClient (default jobs.cluster.connect). A schedule whose cluster cannot be asked
    keeps its slot and jobs as they were, with the reason in `last_error`: the next tick that
    reaches the cluster handles the slot. A submit waits up to `agent_wait_s` (default
    jobs.cluster.AGENT_WAIT_S) for the head's job agent."""
    from jobs import cluster

    connect = connect or cluster.connect
    agent_wait_s = cluster.AGENT_WAIT_S if agent_wait_s is None else agent_wait_s
    lines = []
    try:
        with locked(state_path):
            states = load_state(state_path)
            for s in schedules:
                try:
                    lines += tick_one(s, states, state_path, now, connect, environ, agent_wait_s)
                except Exception as err:  # one schedule's fault (its store, its files) never stops the others
                    lines.append(record_error(s, states, state_path, now, err))
    except StateBusy as err:
        lines.append(str(err))
    return [redact(line) for line in lines]


def record_error(s: sch.Schedule, states: dict, state_path: Path, now: dt.datetime, err: Exception) -> str:
    """`err` as the schedule's `last_error`, its slot and jobs as they were: the next tick tries again."""
    st = states.get(s.name, sch.ScheduleState())
    st.last_error, st.last_error_at = f"{type(err).__name__}: {first_line(err)}", sch.iso(now)
    states[s.name] = st
    save_state(state_path, states)
    return f"{s.name}: error, the next tick tries again: {st.last_error}"


def tick_one(s: sch.Schedule, states: dict, state_path: Path, now: dt.datetime, connect, environ,
             agent_wait_s: float) -> list[str]:
    from jobs import cluster

    st = states.get(s.name, sch.ScheduleState())
    try:
        client = connect(s.address)
        statuses = {r.submission_id: cluster.job_status(client, r.submission_id)
                    for r in st.jobs if r.status in sch.ACTIVE}
    except (UserError, RuntimeError) as err:  # no answer, refused, or the server erred
        st.last_error, st.last_error_at = first_line(err), sch.iso(now)
        states[s.name] = st
        save_state(state_path, states)
        return [f"{s.name}: cluster not reached, the next tick tries again: {st.last_error}"]
    st.last_error, st.last_error_at = "", None
    data, error = read_data(s) if s.trigger.kind in ("new-version", "new-images") else (None, "")
    metric = None
    if s.trigger.kind == "metric-below":
        metric, error = read_metric(s, st)
    plan = sch.plan_tick(s, st, now, statuses, data, metric, error)
    states[s.name] = plan.state
    save_state(state_path, states)  # the slot is taken before the job exists (see module doc)
    lines = [f"{s.name}: {note}" for note in plan.notes]
    for rec in plan.submits:
        line = submit_record(s, rec, client, now, environ, agent_wait_s)
        if rec.status == "SUBMITTING":
            plan.state.last_error, plan.state.last_error_at = line, sch.iso(now)
        lines.append(f"{s.name}: {line}")
        save_state(state_path, states)
    return lines


def submit_record(s: sch.Schedule, rec: sch.JobRecord, client, now: dt.datetime, environ=os.environ,
                  agent_wait_s: float | None = None) -> str:
    from jobs import cluster
    from jobs import submit as js

    args, extra = sch.job_args(s, rec)
    try:
        spec = js.build_spec(s.command, args, env=dict(s.env), submission_id=rec.submission_id, environ=environ,
                             metadata={"schedule": s.name, "slot": rec.slot, "attempt": rec.attempt,
                                       "trigger_reason": rec.reason}, **extra)
        js.submit(client, spec, cluster.AGENT_WAIT_S if agent_wait_s is None else agent_wait_s)
        rec.status, rec.message = "PENDING", ""
        return f"submitted {rec.submission_id}"
    except js.JobExists:
        rec.status = "PENDING"  # a previous tick got it there; its status is read on the next tick
        return f"{rec.submission_id} already on the cluster; counted as submitted"
    except cluster.AgentNotReady as err:  # refused before it was created: stays SUBMITTING, sent again next tick
        rec.message = f"not submitted: {first_line(err)}"
        return f"{rec.submission_id} not submitted, the next tick sends it again: {first_line(err)}"
    except cluster.ClusterError as err:  # no answer: it may or may not have landed. Stays SUBMITTING.
        return f"submit of {rec.submission_id} not confirmed ({first_line(err)}); the next tick checks and resends it"
    except (UserError, RuntimeError, OSError) as err:  # the spec or the server said no
        return f"submit failed: {sch.mark_failed(s, rec, now, 'FAILED', first_line(err))}"


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
        if st.last_error:
            lines.append(f"  last error: {st.last_error_at}: {st.last_error}")
    return lines
