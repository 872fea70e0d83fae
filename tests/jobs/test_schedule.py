"""The scheduler: pure tick plans under a fake clock, the durable state across restarts, the
schedule file's validation, and real `schedule tick` processes against a real Ray head."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from jobs import cluster
from jobs import schedule as sch
from jobs.schedule_state import load_state, locked, read_metric, save_state
from jobs.schedule_state import tick as tick_in_process
from tests.support.netfault import FaultyProxy
from pipelines.errors import UserError

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 5, 2, 0, tzinfo=UTC)  # a Monday, exactly on the 02:00 slot


def nightly(**kw) -> sch.Schedule:
    return sch.Schedule(name="nightly", cron="0 2 * * *", data="/d", **kw)


def test_one_submission_per_slot_across_a_restart(tmp_path):
    s, path = nightly(), tmp_path / "state.json"
    d = sch.plan_tick(s, sch.ScheduleState(), T0, {})
    assert [r.submission_id for r in d.submits] == ["alexnet-sched-nightly-20260105T0200Z-a1"]
    save_state(path, {"nightly": d.state})
    # a fresh scheduler process re-reads the state: same slot, nothing new; next day's slot: one more
    again = sch.plan_tick(s, load_state(path)["nightly"], T0 + dt.timedelta(minutes=5), {d.submits[0].submission_id: "SUCCEEDED"})
    assert again.submits == []
    nxt = sch.plan_tick(s, again.state, T0 + dt.timedelta(days=1), {})
    assert [r.slot for r in nxt.submits] == [sch.iso(T0 + dt.timedelta(days=1))]


@pytest.mark.fault("a scheduler that died before its submit was confirmed", inputs=1,
                   outcome="resubmitted under the same id: no double")
def test_an_unconfirmed_submit_is_resubmitted_with_the_same_id():
    d = sch.plan_tick(nightly(), sch.ScheduleState(), T0, {})
    rec = d.submits[0]  # state saved as SUBMITTING, then the scheduler died before submitting
    again = sch.plan_tick(nightly(), d.state, T0 + dt.timedelta(minutes=1), {rec.submission_id: None})
    assert [r.submission_id for r in again.submits] == [rec.submission_id]


@pytest.mark.fault("an unconfirmed submit whose cluster was unreachable until the next slot", inputs=1,
                   outcome="the old slot SUPERSEDED, the newest submitted once")
def test_an_unconfirmed_submit_from_an_older_slot_gives_way_to_the_newest_slot():
    d = sch.plan_tick(nightly(), sch.ScheduleState(), T0, {})
    rec = d.submits[0]  # never confirmed: the cluster was unreachable until the next day
    later = sch.plan_tick(nightly(), d.state, T0 + dt.timedelta(days=1, minutes=1), {rec.submission_id: None})
    assert [r.slot for r in later.submits] == [sch.iso(T0 + dt.timedelta(days=1))]
    assert later.state.jobs[0].status == "SUPERSEDED" and rec.submission_id not in [r.submission_id for r in later.submits]


def test_missed_slots_run_once_catch_up():
    st = sch.ScheduleState(last_slot=sch.iso(T0))
    d = sch.plan_tick(nightly(), st, T0 + dt.timedelta(days=3, hours=5), {})
    assert len(d.submits) == 1 and d.submits[0].slot == sch.iso(T0 + dt.timedelta(days=3))


def test_time_zone_is_respected():
    s = sch.Schedule(name="berlin", cron="0 2 * * *", time_zone="Europe/Berlin")
    assert sch.latest_slot(s, T0).astimezone(UTC).hour == 1  # 02:00 CET is 01:00 UTC


def test_new_dataset_version_triggers_and_unchanged_does_not():
    s = nightly(trigger=sch.Trigger(kind="new-version"))
    v1 = sch.DataFacts("v1", 100)
    d = sch.plan_tick(s, sch.ScheduleState(), T0, {}, v1)
    rec = d.submits[0]
    assert rec.trigger == "new-data" and "v1" in rec.reason
    ok = sch.plan_tick(s, d.state, T0 + dt.timedelta(hours=1), {rec.submission_id: "SUCCEEDED"}, v1)
    assert ok.state.last_success_version == "v1"
    same = sch.plan_tick(s, ok.state, T0 + dt.timedelta(days=1), {}, v1)
    assert same.submits == [] and "unchanged" in same.state.last_outcome
    new = sch.plan_tick(s, same.state, T0 + dt.timedelta(days=2), {}, sch.DataFacts("v2", 130))
    assert len(new.submits) == 1 and "v1 -> v2" in new.submits[0].reason
    args, extra = sch.job_args(s, new.submits[0])
    assert args[:2] == ["--data", "/d"] and extra["trigger"] == "new-data" and extra["tags"]["schedule"] == "nightly"


def test_new_images_needs_enough_new_images():
    s = nightly(trigger=sch.Trigger(kind="new-images", min_new_images=50))
    st = sch.ScheduleState(last_slot=sch.iso(T0), last_success_images=100)
    few = sch.plan_tick(s, st, T0 + dt.timedelta(days=1), {}, sch.DataFacts("v2", 149))
    assert few.submits == []
    many = sch.plan_tick(s, few.state, T0 + dt.timedelta(days=2), {}, sch.DataFacts("v3", 150))
    assert len(many.submits) == 1


def test_overlap_is_refused_by_default_and_allowed_when_asked():
    d = sch.plan_tick(nightly(), sch.ScheduleState(), T0, {})
    sid = d.submits[0].submission_id
    d.state.jobs[0].status = "PENDING"
    later = T0 + dt.timedelta(days=1)
    refused = sch.plan_tick(nightly(), d.state, later, {sid: "RUNNING"})
    assert refused.submits == [] and "still RUNNING" in refused.state.last_outcome
    allowed = sch.plan_tick(nightly(allow_overlap=True), d.state, later, {sid: "RUNNING"})
    assert len(allowed.submits) == 1


@pytest.mark.fault("a scheduled job that fails three times", inputs=3,
                   outcome="retried at 60 s then 120 s, not before; then given up, recorded")
def test_failed_jobs_retry_with_exponential_backoff_then_give_up():
    s = nightly(max_retries=2, retry_backoff_s=60)
    d = sch.plan_tick(s, sch.ScheduleState(), T0, {})
    st, sid, now = d.state, d.submits[0].submission_id, T0
    delays = []
    for attempt in (1, 2):
        st.jobs[-1].status = "PENDING"
        failed_at = now + dt.timedelta(minutes=1)
        d = sch.plan_tick(s, st, failed_at, {sid: "FAILED"})
        retry_at = sch.parse_iso(d.state.jobs[-1].retry_at)
        delays.append((retry_at - failed_at).total_seconds())
        assert sch.plan_tick(s, d.state, retry_at - dt.timedelta(seconds=1), {}).submits == []
        d = sch.plan_tick(s, d.state, retry_at, {})
        assert [r.attempt for r in d.submits] == [attempt + 1]
        st, sid, now = d.state, d.submits[0].submission_id, retry_at
    assert delays == [60, 120]
    st.jobs[-1].status = "PENDING"
    final = sch.plan_tick(s, st, now + dt.timedelta(minutes=1), {sid: "FAILED"})
    assert final.submits == [] and "giving up" in final.state.last_outcome and final.state.jobs[-1].retry_at is None


def test_metric_below_reads_a_fresh_metric_file(tmp_path):
    f = tmp_path / "metrics.json"
    s = nightly(trigger=sch.Trigger(kind="metric-below", metric_file=str(f), metric="val/top1", threshold=0.6))
    assert read_metric(s, sch.ScheduleState())[0] is None
    f.write_text(json.dumps({"metrics": {"val/top1": 0.5}}))
    value, _ = read_metric(s, sch.ScheduleState())
    assert value == 0.5 and len(sch.plan_tick(s, sch.ScheduleState(), T0, {}, metric=value).submits) == 1
    assert sch.plan_tick(s, sch.ScheduleState(), T0, {}, metric=0.7).submits == []
    later = sch.ScheduleState(last_success_at=sch.iso(dt.datetime.now(UTC) + dt.timedelta(minutes=1)))
    assert read_metric(s, later)[0] is None  # file predates the last retrain: describes the old champion


@pytest.mark.fault("bad schedule entries: unknown key, bad cron, unknown time zone, unknown trigger,"
                   " bad trigger option, unknown command, train without recipe", inputs=7,
                   outcome="UserError naming the schedule and the key")
@pytest.mark.parametrize("bad, words", [
    ({"name": "n1", "cron": "0 2 * * *", "colour": "red"}, ["n1", "colour"]),
    ({"name": "n2", "cron": "61 2 * * *"}, ["n2", "cron"]),
    ({"name": "n3", "cron": "0 2 * * *", "time_zone": "Mars/Olympus"}, ["n3", "time_zone"]),
    ({"name": "n4", "cron": "0 2 * * *", "trigger": {"kind": "sometimes"}}, ["n4", "sometimes"]),
    ({"name": "n5", "cron": "0 2 * * *", "trigger": {"kind": "new-images", "min_new": 3}, "job": {"data": "/d"}}, ["n5", "min_new"]),
    ({"name": "n6", "cron": "0 2 * * *", "job": {"command": "deploy"}}, ["n6", "job.command"]),
    ({"name": "n7", "cron": "0 2 * * *", "job": {"command": "train", "data": "/d"}}, ["n7", "job.recipe"]),
])
def test_bad_schedule_files_name_the_schedule_and_key(tmp_path, bad, words):
    import yaml

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"schedules": [bad]}))
    with pytest.raises(UserError) as err:
        sch.load_schedules(f)
    assert all(w in str(err.value) for w in words)


def write_schedule_file(tmp_path, address, src, dest):
    import yaml

    f = tmp_path / "schedules.yaml"
    f.write_text(yaml.safe_dump({"schedules": [{
        "name": "reingest", "cron": "*/10 * * * *", "time_zone": "UTC",
        "job": {"command": "ingest", "address": address,
                "args": [str(src), str(dest), "--resize", "72", "--format", "png"]},
    }]}))
    return f


def tick(f, now):
    return subprocess.run([sys.executable, "-m", "jobs.cli", "schedule", "tick", "--file", str(f), "--now", now],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # end to end: three `alexnet schedule tick` processes and a real job on the cluster
@pytest.mark.fault("the scheduler state file lost after a submit", inputs=1,
                   outcome="the job found on the cluster and counted as submitted; one job for the slot")
def test_tick_processes_submit_each_slot_once(ray_head, png_source, tmp_path):  # noqa: F811
    from ray.job_submission import JobSubmissionClient

    f = write_schedule_file(tmp_path, ray_head, png_source, tmp_path / "ds")
    first, second = tick(f, "2026-01-05T02:03:00+00:00"), tick(f, "2026-01-05T02:04:00+00:00")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "submitted alexnet-sched-reingest-20260105T0200Z-a1" in first.stdout
    client = JobSubmissionClient(ray_head)
    ours = [j for j in client.list_jobs() if (j.metadata or {}).get("schedule") == "reingest"]
    assert [j.submission_id for j in ours] == ["alexnet-sched-reingest-20260105T0200Z-a1"]
    # the state file is lost (a crash before its save): the re-derived id is found on the cluster
    f.with_name("schedules.state.json").unlink()
    third = tick(f, "2026-01-05T02:05:00+00:00")
    assert third.returncode == 0 and "counted as submitted" in third.stdout, third.stdout + third.stderr
    assert len([j for j in client.list_jobs() if (j.metadata or {}).get("schedule") == "reingest"]) == 1
    status = subprocess.run([sys.executable, "-m", "jobs.cli", "schedule", "status", "--file", str(f),
                             "--now", "2026-01-05T02:05:00+00:00"], capture_output=True, text=True, timeout=60)
    assert "next run:  2026-01-05T02:10" in status.stdout and "reingest" in status.stdout
    deadline = time.monotonic() + 90
    while client.get_job_status(ours[0].submission_id).value not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline
        time.sleep(1)


def ingest_schedule(tmp_path, name, address, src, **extra) -> list[sch.Schedule]:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"schedules": [{
        "name": name, "cron": "*/10 * * * *",
        "job": {"command": "ingest", "address": address,
                "args": [str(src), str(tmp_path / f"{name}-ds"), "--resize", "72", "--format", "png"]}, **extra}]}))
    return sch.load_schedules(f)


def schedule_jobs(ray_head, name) -> list:
    client = cluster.connect(ray_head)
    return [j for j in client.list_jobs() if (j.metadata or {}).get("schedule") == name]


def stop_all(ray_head, jobs) -> None:
    """Stop the test's jobs rather than wait for them: they share the session's 2 CPUs."""
    client, deadline = cluster.connect(ray_head), time.monotonic() + 180
    for j in jobs:
        client.stop_job(j.submission_id)
    while any(cluster.job_status(client, j.submission_id) not in cluster.TERMINAL for j in jobs):
        assert time.monotonic() < deadline, "scheduled job did not end"
        time.sleep(1)


@pytest.mark.fault("the cluster's answer to a submit lost on the way back (tests/support/netfault.py)", inputs=1,
                   outcome="the slot's job runs exactly once; the state follows it; no error left")
def test_a_submit_whose_answer_is_lost_is_neither_doubled_nor_skipped(ray_head, png_source, tmp_path):
    """The submit reaches the cluster, the answer is lost on the way back: the slot's job runs once,
    and the record follows it, even with a retry backoff of a second."""
    proxy = FaultyProxy(ray_head)
    schedules = ingest_schedule(tmp_path, "lostanswer", proxy.url, png_source, retry_backoff_s=1, max_retries=2)
    state = tmp_path / "lostanswer.state.json"
    proxy.lose_answers = b"POST /api/jobs/ "
    try:
        first = tick_in_process(schedules, state, T0 + dt.timedelta(minutes=3))
        assert any("not confirmed" in line for line in first), first
        assert load_state(state)["lostanswer"].jobs[0].status == "SUBMITTING"
        proxy.lose_answers = None
        for minutes in (4, 5, 6):
            tick_in_process(schedules, state, T0 + dt.timedelta(minutes=minutes))
    finally:
        proxy.close()
    jobs = schedule_jobs(ray_head, "lostanswer")
    try:
        assert [j.submission_id for j in jobs] == ["alexnet-sched-lostanswer-20260105T0200Z-a1"]
        st = load_state(state)["lostanswer"]
        assert [r.submission_id for r in st.jobs] == [jobs[0].submission_id]
        assert st.jobs[0].status in ("PENDING", "RUNNING", "SUCCEEDED") and st.last_error == ""
    finally:
        stop_all(ray_head, jobs)


@pytest.mark.fault("every status request's connection dropped, in a running `schedule run` "
                   "(tests/support/netfault.py)", inputs=3,
                   outcome="each failed tick logged and recorded; the loop keeps ticking; slot and job "
                           "unchanged; Ctrl-C exits 130")
def test_schedule_run_survives_a_dropped_connection_and_records_it(ray_head, tmp_path):
    """Every status request loses its connection: `schedule run` logs each failed tick, records it
    in the state, keeps the slot and the job as they were, and keeps ticking."""
    proxy = FaultyProxy(ray_head)
    proxy.drop_requests = b"GET /api/jobs/"
    f = tmp_path / "drop.yaml"
    job = {"command": "ingest", "address": proxy.url, "args": ["a", "b"]}
    f.write_text(yaml.safe_dump({"schedules": [{"name": "drop", "cron": "0 2 * * *", "job": job}]}))
    rec = sch.JobRecord("alexnet-sched-drop-20260105T0200Z-a1", sch.iso(T0), 1, "PENDING", "cron slot", "schedule",
                        sch.iso(T0))
    save_state(tmp_path / "drop.state.json", {"drop": sch.ScheduleState(last_slot=sch.iso(T0), jobs=[rec])})
    loop = subprocess.Popen([sys.executable, "-m", "jobs.cli", "schedule", "run", "--file", str(f), "--interval", "1",
                             "--now", "2026-01-05T02:30:00+00:00"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    failed = []
    try:
        deadline = time.monotonic() + 240
        while len(failed) < 3:
            line = loop.stdout.readline()
            assert line, f"schedule run ended: {loop.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "schedule run went quiet"
            if "cluster not reached" in line:
                failed.append(line)
        assert loop.poll() is None
    finally:
        loop.send_signal(signal.SIGINT)
        rc = loop.wait(timeout=60)
        proxy.close()
    assert rc == 130
    st = load_state(tmp_path / "drop.state.json")["drop"]
    assert "cannot reach" in st.last_error and st.last_slot == sch.iso(T0)
    assert [(r.submission_id, r.status) for r in st.jobs] == [(rec.submission_id, "PENDING")]


@pytest.mark.slow
@pytest.mark.fault("a head that accepts connections and never answers; a tick while another holds "
                   "the state lock", inputs=2,
                   outcome="the tick gives up after its 3 s timeout and records why, slot untouched; the "
                           "second tick returns at once")
def test_a_hung_head_holds_neither_a_tick_nor_the_lock(ray_head, tmp_path):
    """A head that accepts connections and never answers: the tick gives up after the request
    timeout and records why; a second tick meanwhile does not queue behind the lock."""
    proxy = FaultyProxy(ray_head)
    proxy.hang()
    schedules = ingest_schedule(tmp_path, "hung", proxy.url, tmp_path / "src")
    state = tmp_path / "hung.state.json"
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(lines=tick_in_process(
        schedules, state, T0, connect=lambda address: cluster.connect(address, timeout_s=3))), daemon=True)
    try:
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "the tick hung with the head"
    finally:
        proxy.close()
    assert any("did not answer within 3 s" in line for line in out["lines"]), out
    st = load_state(state)["hung"]
    assert "did not answer" in st.last_error and st.last_slot is None and st.jobs == []
    with locked(state):  # another tick holds the state: this one returns instead of waiting its turn
        started = time.monotonic()
        lines = tick_in_process(schedules, state, T0)
    assert any("held by another tick" in line for line in lines) and time.monotonic() - started < 60


@pytest.mark.fault("one schedule's metric file is a JSON list, another's dataset.json cannot be read", inputs=2,
                   outcome="each records its own error and submits nothing; the schedules after them still tick")
def test_one_bad_schedule_does_not_stop_the_others(ray_head, tmp_path):
    listed = tmp_path / "metrics.json"
    listed.write_text("[0.5, 0.6]")
    fine = tmp_path / "fine.json"
    fine.write_text(json.dumps({"val/top1": 0.9}))  # above the threshold: nothing to do
    unreadable = tmp_path / "ds"
    (unreadable / "dataset.json").mkdir(parents=True)  # reading it raises IsADirectoryError
    metric = lambda f: sch.Trigger(kind="metric-below", metric_file=str(f), metric="val/top1", threshold=0.6)  # noqa: E731
    schedules = [sch.Schedule(name="listed", cron="0 2 * * *", data="/d", address=ray_head, trigger=metric(listed)),
                 sch.Schedule(name="unreadable", cron="0 2 * * *", data=str(unreadable), address=ray_head,
                              trigger=sch.Trigger(kind="new-version")),
                 sch.Schedule(name="fine", cron="0 2 * * *", data="/d", address=ray_head, trigger=metric(fine))]
    state = tmp_path / "state.json"
    lines = tick_in_process(schedules, state, T0)
    assert any(line.startswith("listed:") and "expected a JSON object" in line for line in lines), lines
    assert any(line.startswith("unreadable:") and "dataset.json" in line for line in lines), lines
    assert any(line.startswith("fine:") for line in lines), lines
    states = load_state(state)
    assert all(states[name].jobs == [] for name in ("listed", "unreadable", "fine"))


def test_a_scheduled_sweep_is_submitted_as_tune_with_its_slot_as_the_sweep_name():
    """A tune schedule runs `alexnet tune` with the recipe and the slot's run name (its --name):
    a retry of the slot continues the same sweep, as a retried train job continues its run."""
    s = sch.parse_schedule({"name": "weekly-sweep", "cron": "0 3 * * 0",
                            "job": {"command": "tune", "recipe": "smoke", "data": "/d",
                                    "args": ["--space", "space.yaml", "--trials", "8"]}}, "t")
    rec = sch.plan_tick(s, sch.ScheduleState(), T0, {}).submits[0]
    args, extra = sch.job_args(s, rec)
    assert args == ["--data", "/d", "--space", "space.yaml", "--trials", "8"]
    assert extra["recipe"] == "smoke" and extra["run_name"] == sch.run_name(s, sch.parse_iso(rec.slot))
    with pytest.raises(UserError, match="a tune job needs job.recipe"):
        sch.parse_schedule({"name": "x", "cron": "0 3 * * 0", "job": {"command": "tune"}}, "t")
