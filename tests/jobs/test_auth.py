"""A cluster with Ray's token authentication on (its default; the session's Ray has it): the CLI
finds the token where Ray looks for it, and a refusal says so and names the fix.

Each command runs as a new user's shell would: a subprocess with no RAY_AUTH_* variable set
except the ones a test gives it, and a HOME of its own (no ~/.ray/auth_token unless the test puts
one there)."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def cli(args: list[str], home: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base.update(HOME=str(home), **env)
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=base, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("source", ["default file", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"])
def test_the_token_is_found_where_ray_looks_without_ray_auth_mode(ray_head, ray_auth_token, tmp_path, source):
    home, env = tmp_path / "home", {}
    token = ray_auth_token.read_text().strip()
    if source == "default file":
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text(token)
    elif source == "RAY_AUTH_TOKEN_PATH":
        env["RAY_AUTH_TOKEN_PATH"] = str(ray_auth_token)
    else:
        env["RAY_AUTH_TOKEN"] = token
    home.mkdir(exist_ok=True)
    done = cli(["jobs", "list", "--address", ray_head], home, **env)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_submit_wait_streams_and_reports_a_job_with_the_token_from_a_file(ray_head, ray_auth_token, tmp_path):
    """Submit, the log stream (a websocket) and the status polls all carry the token."""
    home = tmp_path / "home"
    home.mkdir()
    done = cli(["submit", "ingest", "--address", ray_head, "--wait", "--", str(tmp_path / "missing"),
                str(tmp_path / "ds")], home, RAY_AUTH_TOKEN_PATH=str(ray_auth_token))
    assert done.returncode == 1, done.stdout + done.stderr  # the job ran, and failed: its source is missing
    assert "FAILED" in done.stderr and "missing" in done.stdout  # the job's own error line came through the stream


@pytest.mark.fault("an authenticated cluster with no token, a wrong token, auth disabled on the "
                   "client, each to `jobs list` and `submit`", inputs=6,
                   outcome="exit 2, one line saying refused and naming the fix, never 'cannot reach'")
@pytest.mark.parametrize("case, env, words", [
    ("no token", {}, ["refused", "requires a token and none was sent", "RAY_AUTH_TOKEN", "~/.ray/auth_token"]),
    ("wrong token", {"RAY_AUTH_TOKEN": "not-the-cluster-token"}, ["refused the token from RAY_AUTH_TOKEN"]),
    ("auth turned off here", {"RAY_AUTH_MODE": "disabled"}, ["refused", "RAY_AUTH_MODE=disabled"]),
])
def test_a_refusal_is_one_line_naming_the_fix(ray_head, ray_auth_token, tmp_path, case, env, words):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if case == "auth turned off here":  # a token is at hand, but RAY_AUTH_MODE=disabled says not to send it
        (home / ".ray" / "auth_token").write_text(ray_auth_token.read_text())
    for args in (["jobs", "list"], ["submit", "ingest", "--", "a", "b"]):
        done = cli([*args, "--address", ray_head] if args[0] == "jobs" else
                   [args[0], args[1], "--address", ray_head, *args[2:]], home, **env)
        err = done.stderr.strip()
        assert done.returncode == 2 and len(err.splitlines()) == 1, err
        assert all(w in err for w in words) and "cannot reach" not in err, err


@pytest.mark.fault("a schedule tick refused by an authenticated cluster", inputs=1,
                   outcome="the tick exits 0, records the refusal, slot and jobs untouched; status names "
                           "RAY_AUTH_TOKEN")
def test_a_refused_schedule_tick_is_recorded_and_retried(ray_head, ray_auth_token, tmp_path):
    f = tmp_path / "schedules.yaml"
    f.write_text(yaml.safe_dump({"schedules": [{"name": "authcheck", "cron": "*/10 * * * *", "job": {
        "command": "ingest", "address": ray_head, "args": [str(tmp_path / "missing"), str(tmp_path / "ds")]}}]}))
    home = tmp_path / "home"
    home.mkdir()
    done = cli(["schedule", "tick", "--file", str(f), "--now", "2026-01-05T02:03:00+00:00"], home)
    assert done.returncode == 0 and "refused" in done.stdout, done.stdout + done.stderr
    state = json.loads(f.with_name("schedules.state.json").read_text())["schedules"]["authcheck"]
    assert "refused" in state["last_error"] and state["last_slot"] is None and state["jobs"] == []
    status = cli(["schedule", "status", "--file", str(f), "--now", "2026-01-05T02:03:00+00:00"], home)
    assert "last error" in status.stdout and "RAY_AUTH_TOKEN" in status.stdout


# Turning token auth off: a variable set in code, or on a documented command line.
TURNS_AUTH_OFF = re.compile(r"""RAY_AUTH_MODE["']\s*[,:\]]\s*=?\s*["']disabled|RAY_AUTH_MODE=disabled\s*&&""")


def test_no_script_of_the_project_turns_token_auth_off():
    """A benchmark or job's local Ray keeps Ray's default: it binds to the node's address, not
    only loopback. Reading RAY_AUTH_MODE (jobs.cluster honours a user's choice) is not setting it."""
    root = Path(__file__).resolve().parents[2]
    sources = [p for d in ("alexnet", "benchmarks", "jobs", "pipelines") for p in (root / d).rglob("*.py")]
    offenders = [str(p.relative_to(root)) for p in sources if TURNS_AUTH_OFF.search(p.read_text())]
    assert sources and not offenders, offenders
