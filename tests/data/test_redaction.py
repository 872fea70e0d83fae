"""One redaction rule (pipelines.redaction) for MLflow params and tags, printed job entrypoints and
environments, and log lines; credentials travel in a job's environment, never its command line."""

from __future__ import annotations

import os
import time

import pytest

from pipelines.redaction import carries_credentials, is_secret, redact
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


@pytest.mark.fault("an AWS secret key holding /, @ or : in an s3:// URI", inputs=3,
                   outcome="masked up to the last @; the storage check refuses the URI without echoing it")
@pytest.mark.parametrize("secret", ["wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "pa@ss/w0rd", "a:b/c@d"])
def test_secrets_with_slash_at_or_colon_are_masked_and_refused(secret):
    from pipelines.storage import locate

    uri = f"s3://AKIAEXAMPLE:{secret}@bucket/datasets/photos"
    assert carries_credentials(uri)
    assert redact(f"--data {uri} --epochs 2") == "--data s3://***@bucket/datasets/photos --epochs 2"
    with pytest.raises(UserError, match="credentials and options do not belong in the URI") as err:
        locate(uri)
    assert secret not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000/path@x", "s3://bucket/photos@2x/a.jpg", "https://h/a:b@c",
                                 "file:///tmp/a@b"])
def test_an_at_sign_in_a_path_is_not_a_credential(uri):
    assert not carries_credentials(uri) and redact(uri) == uri


@pytest.mark.fault("secrets given to `submit`: MLFLOW_TRACKING_PASSWORD and AWS keys in the environment, "
                   "a tracking URI password in MLFLOW_TRACKING_URI, --env WANDB_API_KEY / DB_PASS / GITHUB_PAT, "
                   "a --pip line with a git token", inputs=7,
                   outcome="the environment's are left out of the job and named; the others are refused "
                           "without echoing the secret")
def test_submit_sends_no_secret_to_the_job(capsys):
    environ = {"MLFLOW_TRACKING_URI": "https://mlflow.example.com", "MLFLOW_TRACKING_PASSWORD": PASSWORD,
               "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": PASSWORD, "AWS_REGION": "us-west-2"}
    spec = js.build_spec("ingest", ["/src", "/dest"], environ=environ, env={"MODE": "fast"})
    assert PASSWORD not in str(spec.runtime_env()) and "AKIA1" not in str(spec.runtime_env())
    assert spec.runtime_env()["env_vars"]["MODE"] == "fast" and spec.runtime_env()["env_vars"]["AWS_REGION"] == "us-west-2"
    assert spec.withheld == ("MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    refused = [dict(environ={"MLFLOW_TRACKING_URI": f"https://user:{PASSWORD}@mlflow.example.com"}),
               *(dict(env={name: PASSWORD}) for name in ("WANDB_API_KEY", "DB_PASS", "GITHUB_PAT")),
               dict(pip=[f"git+https://{PASSWORD}@github.com/org/lib@v1"])]
    for kwargs in refused:
        with pytest.raises(UserError, match="job table") as err:
            js.build_spec("ingest", ["/src", "/dest"], **{"environ": {}, **kwargs})
        assert PASSWORD not in str(err.value), kwargs


@pytest.mark.fault("--tracking-uri with a password (2 spellings)", inputs=2,
                   outcome="refused before submitting, the password not echoed")
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_tracking_uri_with_credentials_is_refused(form):
    uri = f"https://user:{PASSWORD}@mlflow.example.com"
    args = ["--data", "/d", *(["--tracking-uri", uri] if form == "separate" else [f"--tracking-uri={uri}"])]
    with pytest.raises(UserError, match="carries a credential") as err:
        js.build_spec("train", args, recipe="smoke", run_name="r1")
    assert PASSWORD not in str(err.value) and "~/.mlflow/credentials" in str(err.value)
    plain = js.build_spec("train", ["--tracking-uri", "http://mlflow:5000"], recipe="smoke", run_name="r2")
    assert "--tracking-uri http://mlflow:5000" in plain.entrypoint  # nothing secret: stays visible


@pytest.mark.fault("a --set URI (its secret holding /), --password and a --tag with credentials on a job's "
                   "command line", inputs=3,
                   outcome="refused without echoing the secret")
@pytest.mark.parametrize("args", [["--set", f"data.path=s3://ak:{PASSWORD}/x@bucket/d"], ["--password", PASSWORD],
                                  ["--tag", f"api_key={PASSWORD}"]])
def test_other_arguments_with_credentials_are_refused_without_echoing_them(args):
    with pytest.raises(UserError, match="carries a credential") as err:
        js.build_spec("train", ["--data", "/d", *args], recipe="smoke", run_name="r")
    assert PASSWORD not in str(err.value)


@pytest.mark.fault("a real submit from an environment holding MLflow and AWS secrets", inputs=1,
                   outcome="no password in the whole job record (get_job_info, /api/jobs), the printed lines "
                           "or `jobs status`")
def test_the_job_table_never_holds_a_secret(ray_head, tmp_path, capsys, monkeypatch):
    """A real submit: Ray's job table (what `ray job list`, /api/jobs and the dashboard show) has no secret."""
    import urllib.request

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", PASSWORD)
    monkeypatch.setenv("AWS_SESSION_TOKEN", PASSWORD)
    sid = f"test-redact-{os.getpid()}"
    assert main(["submit", "evaluate", "--address", ray_head, "--submission-id", sid, "--",
                 "--model", "models:/m/1", "--data", str(tmp_path / "missing"),
                 "--tracking-uri", "http://127.0.0.1:9/"]) == 0  # nothing listens: the job fails fast
    printed = capsys.readouterr().out
    assert "not sent" in printed and "MLFLOW_TRACKING_PASSWORD" in printed
    client = cluster.connect(ray_head)
    try:
        assert PASSWORD not in printed and PASSWORD not in repr(client.get_job_info(sid))
        request = urllib.request.Request(f"{ray_head}/api/jobs/", headers=cluster.auth_headers())
        table = urllib.request.urlopen(request, timeout=30).read().decode()
        assert sid in table and PASSWORD not in table
        assert main(["jobs", "status", sid, "--address", ray_head]) in (0, 1)
        assert PASSWORD not in capsys.readouterr().out
    finally:
        deadline = time.monotonic() + 120
        while cluster.job_status(client, sid) not in cluster.TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
