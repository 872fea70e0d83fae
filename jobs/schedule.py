"""Scheduled retraining: the schedule file, and the pure plan of what to submit when.

`plan_tick(schedule, state, now, statuses, data, metric) -> TickPlan` takes everything it needs as
arguments (the clock, the jobs' statuses on the cluster, the dataset's facts) and returns the new
state plus the jobs to submit; `jobs.schedule_state.tick` does the I/O around it.

Slots: a slot is a cron time in the schedule's time zone. Only the most recent slot at or before
`now` is considered, so after downtime the scheduler runs the latest missed slot once (catch-up)
rather than every missed one; a schedule seen for the first time runs its most recent slot.
The submission id is derived from (schedule, slot, attempt), so a restarted scheduler that
resubmits a slot finds the id already on the cluster and counts it as submitted. A submit whose
answer never came (connection dropped, head hung, token refused) stays SUBMITTING and is sent
again, under the same id, by the next tick that reaches the cluster; if a newer slot is due by
then, the newer slot runs instead (catch-up, as after downtime).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from pipelines.errors import UserError

TRIGGERS = ("always", "new-version", "new-images", "metric-below")
ACTIVE = ("SUBMITTING", "PENDING", "RUNNING")  # SUBMITTING: recorded, submit not yet confirmed
HISTORY = 20  # finished job records kept per schedule

SCHEDULE_KEYS = {"name", "cron", "time_zone", "job", "trigger", "allow_overlap", "max_retries", "retry_backoff_s"}
JOB_KEYS = {"command", "recipe", "data", "address", "args", "env"}
TRIGGER_KEYS = {"always": {"kind"}, "new-version": {"kind"}, "new-images": {"kind", "min_new_images"},
                "metric-below": {"kind", "metric_file", "metric", "threshold"}}


@dataclass(frozen=True)
class Trigger:
    kind: str = "always"  # one of TRIGGERS
    min_new_images: int = 1  # new-images: images added since the last successful run
    metric_file: str = ""  # metric-below: JSON file with the champion's metrics on fresh data
    metric: str = "val/top1"  # metric-below: key in that file
    threshold: float = 0.0  # metric-below: retrain when the metric is below this


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str  # 5-field cron expression, evaluated in time_zone
    time_zone: str = "UTC"  # IANA name, e.g. Europe/Berlin
    command: str = "train"  # the `alexnet` command the job runs
    recipe: str | None = None  # train recipe (name or file under the project directory)
    data: str | None = None  # dataset directory, passed as --data and read by the data triggers
    address: str | None = None  # job server; default $RAY_ADDRESS at tick time
    args: tuple[str, ...] = ()  # more arguments for the command
    env: tuple[tuple[str, str], ...] = ()  # extra job environment (no secrets: they come from the environment)
    trigger: Trigger = Trigger()
    allow_overlap: bool = False  # submit even while this schedule's previous job is PENDING/RUNNING
    max_retries: int = 2  # resubmissions of a FAILED job before it is reported
    retry_backoff_s: float = 300.0  # first retry delay in seconds; doubles per retry

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@dataclass
class JobRecord:
    submission_id: str
    slot: str  # ISO time of the slot, UTC
    attempt: int
    status: str  # SUBMITTING, PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, SUPERSEDED (never reached the cluster)
    reason: str  # why the trigger fired
    trigger: str  # `--trigger` passed to train: schedule | new-data
    submitted_at: str
    data_version: str | None = None
    num_images: int | None = None
    finished_at: str | None = None
    retry_at: str | None = None  # when a FAILED job will be resubmitted
    message: str = ""


@dataclass
class ScheduleState:
    last_slot: str | None = None  # the most recent slot handled (submitted or skipped), UTC ISO
    last_outcome: str = ""  # one line for `schedule status`
    last_success_at: str | None = None
    last_success_version: str | None = None  # dataset version of the last successful run
    last_success_images: int | None = None
    last_error: str = ""  # why the last tick could not reach the cluster; "" once one does
    last_error_at: str | None = None
    jobs: list[JobRecord] = field(default_factory=list)


@dataclass(frozen=True)
class DataFacts:
    version: str
    num_images: int


@dataclass(frozen=True)
class TickPlan:
    state: ScheduleState
    submits: list[JobRecord]  # records (also in state.jobs) whose job must be submitted now
    notes: list[str]


# -- the schedule file ---------------------------------------------------------------------------

def _check_keys(where: str, given: dict, allowed: set) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (supported: {', '.join(sorted(allowed))})")


def parse_schedule(raw: dict, where: str) -> Schedule:
    from croniter import croniter

    if not isinstance(raw, dict):
        raise UserError(f"{where}: each schedule must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name):
        raise UserError(f"{where}: name {name!r} must be 1-40 of a-z, 0-9 and '-'")
    where = f"{where} ({name})"
    _check_keys(where, raw, SCHEDULE_KEYS)
    cron = raw.get("cron")
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise UserError(f"{where}: cron {cron!r} is not a 5-field cron expression")
    tz = raw.get("time_zone", "UTC")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"{where}: time_zone {tz!r} is not a known IANA time zone") from None
    job = raw.get("job") or {}
    if not isinstance(job, dict):
        raise UserError(f"{where}: job must be a mapping")
    _check_keys(f"{where} job", job, JOB_KEYS)
    from jobs.submit import COMMANDS, RUNS

    command = job.get("command", "train")
    if command not in COMMANDS:
        raise UserError(f"{where}: job.command {command!r}: expected one of {', '.join(COMMANDS)}")
    trig = raw.get("trigger", {"kind": "always"})
    trig = {"kind": trig} if isinstance(trig, str) else trig
    if not isinstance(trig, dict) or trig.get("kind") not in TRIGGERS:
        kind = trig.get("kind") if isinstance(trig, dict) else trig
        raise UserError(f"{where}: trigger {kind!r}: expected one of {', '.join(TRIGGERS)}")
    _check_keys(f"{where} trigger", trig, TRIGGER_KEYS[trig["kind"]])
    if trig["kind"] in ("new-version", "new-images") and not job.get("data"):
        raise UserError(f"{where}: trigger {trig['kind']} needs job.data (the dataset directory it watches)")
    if trig["kind"] == "metric-below" and not (trig.get("metric_file") and "threshold" in trig):
        raise UserError(f"{where}: trigger metric-below needs metric_file and threshold")
    args = job.get("args", [])
    if not isinstance(args, list):
        raise UserError(f"{where}: job.args must be a list of strings")
    if command in RUNS and not job.get("recipe") and "--recipe" not in map(str, args):
        raise UserError(f"{where}: a {command} job needs job.recipe (a shipped recipe such as paper or torchvision, "
                        "or a YAML file under the project directory)")
    env = job.get("env", {})
    if not isinstance(env, dict):
        raise UserError(f"{where}: job.env must be a mapping")
    try:
        return Schedule(
            name=name, cron=cron, time_zone=str(tz), command=command, recipe=job.get("recipe"),
            data=job.get("data"), address=job.get("address"), args=tuple(str(a) for a in args),
            env=tuple((str(k), str(v)) for k, v in env.items()),
            trigger=Trigger(kind=trig["kind"], min_new_images=int(trig.get("min_new_images", 1)),
                            metric_file=str(trig.get("metric_file", "")), metric=str(trig.get("metric", "val/top1")),
                            threshold=float(trig.get("threshold", 0.0))),
            allow_overlap=bool(raw.get("allow_overlap", False)), max_retries=int(raw.get("max_retries", 2)),
            retry_backoff_s=float(raw.get("retry_backoff_s", 300.0)),
        )
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


def load_schedules(path: str | Path) -> list[Schedule]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"--file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or set(raw) != {"schedules"} or not isinstance(raw["schedules"], list):
        raise UserError(f"{path}: expected one top-level key 'schedules' holding a list")
    schedules = [parse_schedule(item, f"{path} schedules[{i}]") for i, item in enumerate(raw["schedules"])]
    names = [s.name for s in schedules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: schedule name {dupes[0]!r} is used twice")
    return schedules


# -- time ----------------------------------------------------------------------------------------

def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def latest_slot(s: Schedule, now: dt.datetime) -> dt.datetime:
    """The most recent cron time <= now (a slot equal to now is due now)."""
    from croniter import croniter

    local = now.astimezone(s.zone()) + dt.timedelta(seconds=1)
    return croniter(s.cron, local).get_prev(dt.datetime)


def next_slot(s: Schedule, now: dt.datetime) -> dt.datetime:
    from croniter import croniter

    return croniter(s.cron, now.astimezone(s.zone())).get_next(dt.datetime)


def submission_id(s: Schedule, slot: dt.datetime, attempt: int) -> str:
    return f"alexnet-sched-{s.name}-{slot.astimezone(dt.timezone.utc):%Y%m%dT%H%MZ}-a{attempt}"


def run_name(s: Schedule, slot: dt.datetime) -> str:
    """One MLflow/Ray run name per slot: a retry resumes the failed attempt's checkpoints."""
    return f"{s.name}-{slot.astimezone(dt.timezone.utc):%Y%m%d-%H%M}"


# -- the plan of a tick -----------------------------------------------------------------------

def why_run(s: Schedule, st: ScheduleState, data: DataFacts | None, metric: float | None,
            data_error: str = "") -> tuple[str | None, str]:
    """(reason to run or None, reason line). Data triggers need `data`; metric-below needs `metric`."""
    kind = s.trigger.kind
    if kind == "always":
        return "schedule", "cron slot"
    if kind in ("new-version", "new-images") and data is None:
        return None, f"dataset unreadable: {data_error or 'unknown'}"
    if kind == "new-version":
        if data.version == st.last_success_version:
            return None, f"dataset version {data.version} unchanged since the last successful run"
        return "new-data", f"dataset version {st.last_success_version or 'none'} -> {data.version}"
    if kind == "new-images":
        grown = data.num_images - (st.last_success_images or 0)
        if st.last_success_images is not None and grown < s.trigger.min_new_images:
            return None, f"{grown} new images since the last successful run (< {s.trigger.min_new_images})"
        return "new-data", f"{grown} new images (>= {s.trigger.min_new_images})"
    if metric is None:
        return None, f"metric {s.trigger.metric} unavailable: {data_error or 'no fresh metric file'}"
    if metric >= s.trigger.threshold:
        return None, f"{s.trigger.metric} {metric:.4f} >= {s.trigger.threshold}"
    return "schedule", f"{s.trigger.metric} {metric:.4f} < {s.trigger.threshold}"


def mark_failed(s: Schedule, rec: JobRecord, now: dt.datetime, status: str, message: str = "") -> str:
    """Record a FAILED/STOPPED outcome; a FAILED one gets a retry time while retries remain."""
    rec.status, rec.finished_at, rec.message = status, iso(now), message or rec.message
    if status == "FAILED" and rec.attempt <= s.max_retries:
        delay = s.retry_backoff_s * 2 ** (rec.attempt - 1)
        rec.retry_at = iso(now + dt.timedelta(seconds=delay))
        return f"{rec.submission_id} FAILED; retry {rec.attempt}/{s.max_retries} at {rec.retry_at}"
    rec.retry_at = None
    if status == "FAILED":
        return f"{rec.submission_id} FAILED after {rec.attempt} attempts; giving up on slot {rec.slot}"
    return f"{rec.submission_id} STOPPED; not retried"


def _new_record(s: Schedule, slot: dt.datetime, attempt: int, now: dt.datetime, reason: str, trigger: str,
                data: DataFacts | None) -> JobRecord:
    return JobRecord(submission_id(s, slot, attempt), iso(slot), attempt, "SUBMITTING", reason, trigger, iso(now),
                     data.version if data else None, data.num_images if data else None)


def plan_tick(s: Schedule, state: ScheduleState, now: dt.datetime, statuses: dict[str, str | None],
           data: DataFacts | None = None, metric: float | None = None, data_error: str = "") -> TickPlan:
    """What to submit at `now`. `statuses` maps each active record's id to its status on the
    cluster (None: unknown to the cluster). Returns a new state; the input is not modified."""
    st = copy.deepcopy(state)
    submits: list[JobRecord] = []
    notes: list[str] = []

    slot = latest_slot(s, now)
    for rec in st.jobs:  # 1. fold in what the cluster says about our jobs
        if rec.status not in ACTIVE or rec.submission_id not in statuses:
            continue
        status = statuses[rec.submission_id]
        if status is None and rec.status == "SUBMITTING" and parse_iso(rec.slot) < slot:
            rec.status, rec.finished_at = "SUPERSEDED", iso(now)
            rec.message = f"never reached the cluster; slot {iso(slot)} runs instead"
            notes.append(f"{rec.submission_id}: {rec.message}")
        elif status is None and rec.status == "SUBMITTING":
            submits.append(rec)  # recorded, but the submit never reached the cluster: same id again
        elif status is None:
            note = mark_failed(s, rec, now, "FAILED", "job no longer known to the cluster")
            notes.append(note)
            st.last_outcome = note
        elif status == "SUCCEEDED":
            rec.status, rec.finished_at, rec.retry_at = status, iso(now), None
            st.last_success_at = iso(now)
            st.last_success_version, st.last_success_images = rec.data_version, rec.num_images
            st.last_outcome = f"{rec.submission_id} SUCCEEDED"
            notes.append(st.last_outcome)
        elif status in ("FAILED", "STOPPED"):
            st.last_outcome = mark_failed(s, rec, now, status)
            notes.append(st.last_outcome)
        else:
            rec.status = status

    def busy() -> JobRecord | None:
        return next((r for r in st.jobs if r.status in ACTIVE), None)

    for rec in list(st.jobs):  # 2. retries whose backoff has passed
        if rec.status != "FAILED" or not rec.retry_at or now < parse_iso(rec.retry_at):
            continue
        if rec.slot != st.last_slot:
            rec.retry_at = None
            notes.append(f"{rec.submission_id}: retry dropped, superseded by slot {st.last_slot}")
            continue
        other = busy()
        if other and not s.allow_overlap:
            notes.append(f"{rec.submission_id}: retry waits, {other.submission_id} is {other.status}")
            continue
        rec.retry_at = None
        new = _new_record(s, parse_iso(rec.slot), rec.attempt + 1, now, rec.reason, rec.trigger,
                          DataFacts(rec.data_version, rec.num_images) if rec.data_version is not None else None)
        st.jobs.append(new)
        submits.append(new)
        st.last_outcome = f"retrying slot {rec.slot} as {new.submission_id}"
        notes.append(st.last_outcome)

    # 3. the most recent slot, if not handled yet
    if st.last_slot is None or slot > parse_iso(st.last_slot):
        st.last_slot = iso(slot)
        other = busy()
        trigger, reason = why_run(s, st, data, metric, data_error)
        if other and not s.allow_overlap:
            st.last_outcome = f"slot {iso(slot)} skipped: {other.submission_id} is still {other.status}"
        elif trigger is None:
            st.last_outcome = f"slot {iso(slot)} skipped: {reason}"
        else:
            new = _new_record(s, slot, 1, now, reason, trigger, data)
            st.jobs.append(new)
            submits.append(new)
            st.last_outcome = f"slot {iso(slot)}: submitting {new.submission_id} ({reason})"
        notes.append(st.last_outcome)

    done = [r for r in st.jobs if r.status not in ACTIVE and not r.retry_at]
    drop = {id(r) for r in done[:-HISTORY]}
    st.jobs = [r for r in st.jobs if id(r) not in drop]
    return TickPlan(st, submits, notes)


def job_args(s: Schedule, rec: JobRecord) -> tuple[list[str], dict]:
    """(arguments for `python -m jobs.cli <command>`, jobs.submit.build_spec keywords) for a record."""
    args = (["--data", s.data] if s.data and s.command != "ingest" else []) + list(s.args)
    from jobs.submit import RUNS  # deferred, as COMMANDS above: a schedule file is read without Ray

    if s.command not in RUNS:
        return args, {}
    return args, {"recipe": s.recipe, "run_name": run_name(s, parse_iso(rec.slot)), "trigger": rec.trigger,
                  "tags": {"schedule": s.name, "trigger_reason": rec.reason, "schedule_slot": rec.slot}}
