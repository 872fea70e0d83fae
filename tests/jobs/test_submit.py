"""`alexnet submit` and `alexnet jobs` against a real Ray head started with `ray start` in a temp dir."""

from __future__ import annotations

import os
import re
import shlex
import threading
import time
from pathlib import Path

import pytest

from jobs import cluster
from jobs import submit as js
from jobs.cli import main
from tests.support import free_port
from tests.support.netfault import FaultyProxy
from pipelines.errors import UserError


@pytest.mark.fault("`submit` with neither --address nor RAY_ADDRESS", inputs=1,
                   outcome="exit 2 naming RAY_ADDRESS")
def test_no_address_and_no_ray_address_is_an_error(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", "ingest", "--", "a", "b"]) == 2
    assert "RAY_ADDRESS" in capsys.readouterr().err


@pytest.mark.fault("a job server address nothing listens on", inputs=1,
                   outcome="exit 2, one line naming the address")
def test_unreachable_address_is_one_clear_line(capsys):
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["jobs", "list", "--address", address]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach a Ray job server" in err and address in err and len(err.splitlines()) == 1


def test_spec_carries_settings_and_run_identity_but_no_secret():
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_PASSWORD": "hunter2",
               "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ENDPOINT_URL": "http://minio:9000", "UNRELATED": "x"}
    spec = js.build_spec("train", ["--data", "/d"], recipe="smoke", run_name="nightly-1", trigger="schedule",
                         tags={"schedule": "nightly"}, environ=environ)
    assert spec.entrypoint.startswith("python -m jobs.cli train --recipe smoke --data /d --run-name nightly-1")
    assert "--trigger schedule --tag schedule=nightly" in spec.entrypoint
    env = spec.runtime_env()["env_vars"]
    assert "MLFLOW_TRACKING_PASSWORD" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "UNRELATED" not in env
    assert "hunter2" not in str(spec.runtime_env()) and "s3cr3t" not in str(spec.runtime_env())
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"  # an S3-compatible store, reached as the submitter does
    assert env["RAY_JOB_SUBMISSION_ID"] == spec.submission_id and spec.submission_id.startswith("alexnet-train-nightly-1-")
    text = js.describe(spec, "http://h:8265")
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "not sent" in text and "MLFLOW_TRACKING_PASSWORD AWS_SECRET_ACCESS_KEY" in text  # named, so nobody wonders
    assert {"user", "command", "config_hash", "git_commit"} <= set(spec.metadata)
    assert ".venv" in spec.runtime_env()["excludes"] and Path(spec.runtime_env()["working_dir"], "jobs").is_dir()


@pytest.mark.fault("a job server address carrying user:password@ that does not answer", inputs=2,
                   outcome="`jobs list` and `submit` exit 2, one line naming the address with the password masked")
def test_an_address_with_a_password_never_prints_it(capsys):
    address = f"http://user:hunter2-address-pw@127.0.0.1:{free_port()}"
    for args in (["jobs", "list", "--address", address], ["submit", "ingest", "--address", address, "--", "a", "b"]):
        assert main(args) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "cannot reach a Ray job server" in err and len(err.splitlines()) == 1, err
        assert "127.0.0.1" in err and "hunter2-address-pw" not in captured.out + err


@pytest.mark.fault("`submit train` without --recipe", inputs=1,
                   outcome="refused before submitting")
def test_a_train_job_without_a_recipe_is_refused_before_submitting():
    with pytest.raises(UserError, match="--recipe is required"):
        js.build_spec("train", ["--data", "/d"])
    assert "--recipe paper" in js.build_spec("train", ["--recipe", "paper", "--data", "/d"]).entrypoint


@pytest.mark.fault("a train-only option on ingest; a recipe outside the project", inputs=2,
                   outcome="refused before submitting")
def test_train_only_options_and_outside_recipes_are_refused(tmp_path):
    with pytest.raises(UserError, match="train and tune only"):
        js.build_spec("ingest", ["a", "b"], run_name="x")
    outside = tmp_path / "r.yaml"
    outside.write_text("optim: {epochs: 1}\n")
    with pytest.raises(UserError, match="outside"):
        js.build_spec("train", [], recipe=str(outside))
    with pytest.raises(UserError, match="--space .*outside"):
        js.build_spec("tune", ["--space", str(outside)], recipe="smoke")


def test_a_tune_job_names_its_sweep_and_ships_its_space_with_the_project():
    """The space file is read by the job from the uploaded project, as a recipe file is; the run
    name is the sweep's --name, so a retried job continues the same sweep."""
    space = js.PROJECT_ROOT / "alexnet" / "recipes" / "smoke.yaml"  # any file under the project
    spec = js.build_spec("tune", ["--space", str(space), "--trials", "4"], recipe="smoke", run_name="nightly",
                         trigger="schedule", tags={"schedule": "s"})
    assert spec.args == ("--recipe", "smoke", "--space", "alexnet/recipes/smoke.yaml", "--trials", "4",
                         "--name", "nightly", "--trigger", "schedule", "--tag", "schedule=s")
    assert spec.submission_id.startswith("alexnet-tune-nightly-")
    with pytest.raises(UserError, match="submit tune: --recipe is required"):
        js.build_spec("tune", ["--space", str(space)])
    # A sweep continued on the cluster: its folder, as `alexnet tune` printed it, and why; nothing that
    # `tune --resume` would refuse.
    resumed = js.build_spec("tune", ["--resume", "s3://bucket/runs/nightly"], trigger="schedule")
    assert resumed.args == ("--resume", "s3://bucket/runs/nightly", "--trigger", "schedule")
    assert resumed.entrypoint.endswith("tune --resume s3://bucket/runs/nightly --trigger schedule")
    with pytest.raises(UserError, match="--recipe and --run-name cannot change it"):
        js.build_spec("tune", ["--resume", "s3://bucket/runs/nightly"], recipe="smoke")


@pytest.mark.slow  # a real job on the session's cluster, end to end
def test_ingest_job_succeeds_and_its_logs_and_status_are_readable(ray_head, png_source, tmp_path, capsys):
    dest = tmp_path / "ds"
    sid = f"test-ingest-{os.getpid()}"
    rc = main(["submit", "ingest", "--address", ray_head, "--submission-id", sid, "--wait", "--",
               str(png_source), str(dest), "--resize", "72", "--format", "png", "--val-fraction", "0.34"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (dest / "dataset.json").is_file()
    assert f"job {sid} SUCCEEDED" in out
    assert main(["jobs", "logs", sid, "--address", ray_head]) == 0
    assert "version" in capsys.readouterr().out
    assert main(["jobs", "status", sid, "--address", ray_head]) == 0
    status = capsys.readouterr().out
    assert "SUCCEEDED" in status and "command: ingest" in status
    assert main(["jobs", "list", "--address", ray_head]) == 0 and sid in capsys.readouterr().out
    # the same id again is refused, not run twice
    assert main(["submit", "ingest", "--address", ray_head, "--submission-id", sid, "--", "a", "b"]) == 2


@pytest.mark.fault("a job that fails (missing source)", inputs=1,
                   outcome="`submit --wait` exits 1 reporting FAILED")
def test_failing_job_reports_failed_and_exits_nonzero(ray_head, tmp_path, capsys):
    rc = main(["submit", "ingest", "--address", ray_head, "--wait", "--", str(tmp_path / "missing"), str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 1 and "FAILED" in err


def test_stop_stops_a_running_job(ray_head, capsys):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    sid = client.submit_job(entrypoint="python -c 'import time; time.sleep(300)'")
    deadline = time.monotonic() + 60
    while cluster.job_status(client, sid) != "RUNNING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    assert main(["jobs", "stop", sid, "--address", ray_head]) == 0
    assert "STOPPED" in capsys.readouterr().out
    assert main(["jobs", "status", sid, "--address", ray_head]) == js.EXIT_CODES["STOPPED"]
    assert main(["jobs", "stop", sid, "--address", ray_head]) == 2  # already stopped: one clear line


@pytest.mark.slow
def test_train_job_logs_an_mlflow_run_with_its_run_name(ray_head, png_source, tmp_path, capsys):
    import mlflow

    dest = tmp_path / "ds"
    assert main(["submit", "ingest", "--address", ray_head, "--wait", "--", str(png_source), str(dest),
                 "--resize", "72", "--format", "png", "--val-fraction", "0.34"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_name = f"submit-test-{os.getpid()}"
    rc = main(["submit", "train", "--address", ray_head, "--recipe", "smoke", "--run-name", run_name,
               "--tag", "origin=test", "--wait", "--", "--data", str(dest), "--set", "optim.epochs=1",
               "--set", "optim.batch_size=4",
               "--tracking-uri", uri, "--workdir", str(tmp_path / "work")])
    assert rc == 0, capsys.readouterr().out[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.mlflow.runName = '{run_name}'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["trigger"] == "manual" and tags["origin"] == "test" and tags.get("ray.job_submission_id", "").startswith("alexnet-train-")


RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def _submit_printer(ray_head, lines: int, every_s: float) -> str:
    """A plain job that prints `line 0` .. `line N-1`, one every `every_s` seconds."""
    from ray.job_submission import JobSubmissionClient

    code = f"import time\nfor i in range({lines}):\n    print(f'line {{i}}', flush=True)\n    time.sleep({every_s})"
    return JobSubmissionClient(ray_head).submit_job(entrypoint=f"python -c {shlex.quote(code)}")


@pytest.mark.fault("the log stream and status polls cut for 5 s mid-job (tests/support/netfault.py)", inputs=1,
                   outcome="followed to SUCCEEDED, exit 0; every log line printed exactly once; a 'lost "
                           "contact' note")
@pytest.mark.slow  # a real job followed through a 5 s outage
def test_following_a_job_survives_a_dropped_connection(ray_head, capsys):
    """The log stream and the status polls lose their connection mid-job for a few seconds: the
    follow goes on to the job's real end, and every line of the log is written exactly once."""
    proxy = FaultyProxy(ray_head)
    sid = _submit_printer(ray_head, lines=30, every_s=0.4)

    def drop_mid_stream():
        deadline = time.monotonic() + 120
        while not any(b"/logs/tail" in r for r in proxy.requests) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        proxy.cut()
        time.sleep(5)
        proxy.restore()

    cutter = threading.Thread(target=drop_mid_stream, daemon=True)
    cutter.start()
    try:
        rc = main(["jobs", "logs", sid, "--follow", "--address", proxy.url])
    finally:
        cutter.join(timeout=130)
        proxy.close()
    captured = capsys.readouterr()
    printed = [line for line in captured.out.splitlines() if line.startswith("line ")]
    assert rc == 0, captured.err
    assert printed == [f"line {i}" for i in range(30)], captured.out[-2000:]
    assert "lost contact" in captured.err
    client = cluster.connect(ray_head)
    assert cluster.job_status(client, sid) == "SUCCEEDED"


@pytest.fixture
def agentless_head():
    """A real head whose job agent cannot bind its HTTP port, because another process on the
    machine holds it (as a second Ray holds Ray's default 52365): the job server answers, and
    its agent never registers."""
    import socket

    from tests.support.ray_cluster import RayCluster

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's agent binds
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    head = RayCluster.start(head_cpus=0, agent_port=holder.getsockname()[1])
    try:
        yield head
    finally:
        head.stop()
        holder.close()


@pytest.mark.slow
@pytest.mark.fault("a head whose job agent cannot bind its port (another process holds it): `submit`, and a "
                   "schedule tick", inputs=2,
                   outcome="`submit` exits 2 after --agent-wait, one line naming the agent's log on the head, which "
                           "says why; the tick keeps the job SUBMITTING (not submitted) with the reason, and a later "
                           "tick that reaches a ready head submits it once")
def test_a_head_whose_job_agent_never_starts_is_one_line_and_a_retryable_slot(agentless_head, ray_head, tmp_path,
                                                                               capsys):
    import json

    import yaml

    client = cluster.connect(agentless_head.dashboard)
    assert not cluster.agent_ready(client)
    start = time.monotonic()
    assert main(["submit", "ingest", "--address", agentless_head.dashboard, "--agent-wait", "5", "--",
                 str(tmp_path / "missing"), str(tmp_path / "ds")]) == 2
    took = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "job agent is not ready after 5 s" in err and took < 60, (took, err)
    log = Path(re.search(r"see (\S+dashboard_agent\.log) on the head node", err).group(1))
    assert "address already in use" in log.read_text()  # the log it names says why
    assert client.list_jobs() == []  # nothing was submitted

    schedules = tmp_path / "schedules.yaml"

    def write(address: str) -> None:
        schedules.write_text(yaml.safe_dump({"schedules": [{"name": "agentless", "cron": "0 2 * * *", "job": {
            "command": "ingest", "address": address, "args": [str(tmp_path / "missing"), str(tmp_path / "ds")]}}]}))

    def job() -> dict:
        state = json.loads(schedules.with_name("schedules.state.json").read_text())["schedules"]["agentless"]
        return state, state["jobs"][-1]

    write(agentless_head.dashboard)
    now = "2026-01-05T02:03:00+00:00"
    assert main(["schedule", "tick", "--file", str(schedules), "--now", now, "--agent-wait", "3"]) == 0
    assert "not submitted, the next tick sends it again" in capsys.readouterr().out
    state, record = job()
    assert record["status"] == "SUBMITTING" and "job agent is not ready" in state["last_error"]
    write(ray_head)  # the head is mended (here: another, ready head at the schedule's address)
    assert main(["schedule", "tick", "--file", str(schedules), "--now", now]) == 0
    assert f"submitted {record['submission_id']}" in capsys.readouterr().out
    state, resent = job()
    assert resent["submission_id"] == record["submission_id"] and resent["status"] == "PENDING"
    assert len(state["jobs"]) == 1 and state["last_error"] == ""
    assert cluster.job_status(cluster.connect(ray_head), record["submission_id"]) is not None


def test_submit_gives_the_driver_time_to_end_its_runs_when_stopped():
    spec = js.build_spec("ingest", ["/src", "/dest"], environ={})
    assert int(spec.runtime_env()["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    own = js.build_spec("ingest", ["/src", "/dest"], env={"RAY_JOB_STOP_WAIT_TIME_S": "5"}, environ={})
    assert own.runtime_env()["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "5"  # the user's choice wins


@pytest.mark.fault("`alexnet jobs stop` of a training job mid-fit", inputs=1,
                   outcome="the MLflow run KILLED with its metrics; the driver log says interrupted, no "
                           "traceback or SIGTERM dump")
@pytest.mark.slow
def test_a_stopped_training_job_ends_its_mlflow_run_killed_quietly(ray_head, shapes_dataset, tmp_path, capsys):
    """`alexnet jobs stop` on a real training job: its MLflow run ends KILLED (not FAILED) and its
    log holds one line saying so, not Ray's SIGTERM stack dump."""
    from mlflow.tracking import MlflowClient

    from alexnet.train import checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_name, sid = f"stopped-{os.getpid()}", f"test-stop-train-{os.getpid()}"
    assert main(["submit", "train", "--address", ray_head, "--recipe", "smoke", "--run-name", run_name,
                 "--submission-id", sid, "--", "--data", str(shapes_dataset), "--set", "optim.epochs=200",
                 "--set", "optim.batch_size=16", "--tracking-uri", uri, "--workdir", str(tmp_path / "work")]) == 0
    client = cluster.connect(ray_head)
    deadline = time.monotonic() + 600
    while not checkpoint.find_latest(str(tmp_path / "work" / "runs"), run_name):  # an epoch is done: mid-fit
        assert cluster.job_status(client, sid) not in cluster.TERMINAL, client.get_job_logs(sid)[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(2)
    capsys.readouterr()
    assert main(["jobs", "stop", sid, "--address", ray_head]) == 0
    assert "STOPPED" in capsys.readouterr().out
    mlflow = MlflowClient(uri)
    [run] = mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()],
                               filter_string=f"attributes.run_name = '{run_name}'")
    assert run.info.status == "KILLED" and "train/loss" in run.data.metrics
    # The driver's own lines; Ray prefixes its workers' lines with "(ActorName pid=N)".
    driver = [line for line in client.get_job_logs(sid).splitlines() if not RAY_WORKER_LINE.match(line)]
    assert "alexnet train: interrupted" in driver
    assert not [line for line in driver if "Traceback" in line or "SIGTERM" in line], "\n".join(driver[-60:])
