"""One redaction rule (pipelines.redaction) for MLflow params and tags, printed job entrypoints and
environments, and log lines; credentials travel in a job's environment, never its command line."""

from __future__ import annotations

import os
import time

import pytest

from pipelines.redaction import is_secret, redact
from alexnet.track.tracking import flatten_params
from jobs import cluster
from jobs import submit as js
from jobs.cli import main
from pipelines.errors import UserError

PASSWORD = "hunter2-Pa55"


@pytest.mark.fault("credential-named variables, params and options", inputs=15,
                   outcome="each value shown as ***")
@pytest.mark.parametrize("name", ["WANDB_API_KEY", "DB_PASS", "GITHUB_PAT", "MLFLOW_TRACKING_PASSWORD",
                                  "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                                  "AWS_SESSION_TOKEN", "HF_TOKEN", "db_password", "data.token", "apiKey",
                                  "SIGNING_KEY", "client_secret", "--password"])
def test_credential_names_are_secret(name):
    assert is_secret(name)
    assert redact(PASSWORD, name) == "***"


@pytest.mark.parametrize("name", ["data.path", "optim.patience", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                  "AWS_REGION", "RAY_AUTH_MODE", "run.register_as", "key", "compass", "PATH"])
def test_ordinary_names_are_not(name):
    assert not is_secret(name)
    assert redact("plain value", name) == "plain value"


@pytest.mark.fault("credentials inside text: URI userinfo (https, s3), --password, NAME=value, a "
                   "signed URL, a Bearer token", inputs=6,
                   outcome="each masked, the rest of the text kept")
@pytest.mark.parametrize("text, kept", [
    (f"https://user:{PASSWORD}@mlflow.example.com/path", "https://***@mlflow.example.com/path"),
    (f"s3://AKIA:{PASSWORD}@bucket/x", "s3://***@bucket/x"),
    (f"python -m jobs.cli train --password {PASSWORD} --data /d", "python -m jobs.cli train --password *** --data /d"),
    (f"--tag api_key={PASSWORD} --set optim.lr=0.1", "--tag api_key=*** --set optim.lr=0.1"),
    (f"GET /x?X-Amz-Signature={PASSWORD}&X-Amz-Date=1", "GET /x?X-Amz-Signature=***&X-Amz-Date=1"),
    (f"Authorization: Bearer {PASSWORD}", "Authorization: Bearer ***"),
])
def test_credentials_inside_text_are_masked(text, kept):
    assert redact(text) == kept and redact(text, "entrypoint") == kept


@pytest.mark.fault("credentials in MLflow params (3 secret names, a URI password)", inputs=4,
                   outcome="no password in any param")
def test_params_and_tags_use_the_same_rule():
    flat = flatten_params({"env": {"WANDB_API_KEY": PASSWORD, "DB_PASS": PASSWORD, "GITHUB_PAT": PASSWORD},
                           "tracking": f"https://u:{PASSWORD}@h/", "data": {"path": "/d"}})
    assert PASSWORD not in str(flat) and flat["data.path"] == "/d"
    assert flat["tracking"] == "https://***@h/" and flat["env.GITHUB_PAT"] == "***"


@pytest.mark.fault("a tracking URI password, an AWS key id and WANDB_API_KEY, DB_PASS, GITHUB_PAT "
                   "given to `submit`", inputs=5,
                   outcome="the job's env carries them; the printed description holds none")
def test_submit_prints_no_credential_from_the_environment_or_env_options(capsys, monkeypatch):
    environ = {"MLFLOW_TRACKING_URI": f"https://user:{PASSWORD}@mlflow.example.com", "AWS_ACCESS_KEY_ID": "AKIA1"}
    spec = js.build_spec("ingest", ["/src", "/dest"], environ=environ,
                         env={"WANDB_API_KEY": PASSWORD, "DB_PASS": PASSWORD, "GITHUB_PAT": PASSWORD, "MODE": "fast"})
    env = spec.runtime_env()["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == environ["MLFLOW_TRACKING_URI"] and env["GITHUB_PAT"] == PASSWORD
    text = js.describe(spec, "http://head:8265")
    assert PASSWORD not in text and "AKIA1" not in text
    assert "MLFLOW_TRACKING_URI=https://***@mlflow.example.com" in text and "MODE=fast" in text
    for name in ("WANDB_API_KEY", "DB_PASS", "GITHUB_PAT", "AWS_ACCESS_KEY_ID"):
        assert f"{name}=***" in text
    assert redact(env["DB_PASS"], "DB_PASS") == "***"


@pytest.mark.fault("--tracking-uri with a password (2 spellings)", inputs=2,
                   outcome="moved to the job's env; the entrypoint and description hold no password")
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_tracking_uri_with_credentials_travels_in_the_job_env(form):
    uri = f"https://user:{PASSWORD}@mlflow.example.com"
    args = ["--data", "/d", *(["--tracking-uri", uri] if form == "separate" else [f"--tracking-uri={uri}"])]
    spec = js.build_spec("train", args, recipe="smoke", run_name="r1")
    assert PASSWORD not in spec.entrypoint and "--tracking-uri" not in spec.entrypoint
    assert spec.runtime_env()["env_vars"]["MLFLOW_TRACKING_URI"] == uri  # train's default: $MLFLOW_TRACKING_URI
    assert PASSWORD not in js.describe(spec, "http://head:8265")
    plain = js.build_spec("train", ["--tracking-uri", "http://mlflow:5000"], recipe="smoke", run_name="r2")
    assert "--tracking-uri http://mlflow:5000" in plain.entrypoint  # nothing secret: stays visible


@pytest.mark.fault("a --set URI, --password and a --tag with credentials on a job's command line", inputs=3,
                   outcome="refused without echoing the secret")
@pytest.mark.parametrize("args", [["--set", f"data.path=s3://ak:{PASSWORD}@bucket/d"], ["--password", PASSWORD],
                                  ["--tag", f"api_key={PASSWORD}"]])
def test_other_arguments_with_credentials_are_refused_without_echoing_them(args):
    with pytest.raises(UserError, match="carries a credential") as err:
        js.build_spec("train", ["--data", "/d", *args], recipe="smoke", run_name="r")
    assert PASSWORD not in str(err.value)


@pytest.mark.fault("a real submit with a tracking URI holding a password", inputs=1,
                   outcome="Ray's job table, the printed lines and `jobs status` hold no password")
def test_the_job_table_never_holds_the_tracking_password(ray_head, tmp_path, capsys):
    """A real submit: Ray's job table (what `ray job list` and the dashboard show) has no password."""
    uri = f"http://user:{PASSWORD}@127.0.0.1:9/"  # nothing listens: the job fails fast after starting
    sid = f"test-redact-{os.getpid()}"
    assert main(["submit", "evaluate", "--address", ray_head, "--submission-id", sid, "--",
                 "--model", "models:/m/1", "--data", str(tmp_path / "missing"), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    client = cluster.connect(ray_head)
    try:
        info = client.get_job_info(sid)
        assert PASSWORD not in printed and PASSWORD not in info.entrypoint
        assert "--tracking-uri" not in info.entrypoint
        assert main(["jobs", "status", sid, "--address", ray_head]) in (0, 1)
        assert PASSWORD not in capsys.readouterr().out
    finally:
        deadline = time.monotonic() + 120
        while cluster.job_status(client, sid) not in cluster.TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
