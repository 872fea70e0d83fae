"""Run a project command as a Ray job on a cluster, through the Ray Jobs API.

The entrypoint is the same `python -m jobs.cli <command> ...` line one would type locally; the
repo root travels as the job's `working_dir`, and the submitter's MLflow/AWS settings travel in
the runtime env's `env_vars` (secrets are copied from the environment, never from files, and
printed only as `***`). Nothing here starts a local Ray: no address is an error.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.provenance import COMMIT_ENV, git_commit
from pipelines.errors import UserError

COMMANDS = ("train", "ingest", "predict", "evaluate")
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # holds pipelines/, alexnet/, jobs/

# Paths under the repo root never uploaded: environments, history, outputs, caches.
EXCLUDES = [".venv", "venv", ".git", "alexnet-work", "mlruns", "mlartifacts", "*.db", "build", "dist",
            "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".devbundle", "benchmarks"]

# Copied from the submitter's environment when set. Values of SECRET_ENV are never printed.
PLAIN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_S3_ENDPOINT_URL",
             "MLFLOW_TRACKING_USERNAME", "AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "ACCESS_KEY", "CREDENTIAL")

ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}  # `--wait` and `jobs status` exit codes


class JobExists(Exception):
    """A job with this submission id is already on the cluster (a repeated submit is a no-op)."""


@dataclass(frozen=True)
class JobSpec:
    command: str  # one of COMMANDS
    args: tuple[str, ...] = ()  # passed through to `python -m jobs.cli <command>`
    submission_id: str = ""
    env: dict = field(default_factory=dict)  # runtime env env_vars, secrets included
    pip: tuple[str, ...] = ()  # extra pip requirements installed for this job only
    metadata: dict = field(default_factory=dict)  # str -> str, shown by `alexnet jobs status`

    @property
    def entrypoint(self) -> str:
        return shlex.join(["python", "-m", "jobs.cli", self.command, *self.args])

    def runtime_env(self) -> dict:
        env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": dict(self.env)}
        if self.pip:
            env["pip"] = list(self.pip)
        return env


def is_secret(name: str) -> bool:
    return name in SECRET_ENV or any(word in name.upper() for word in _SECRET_WORDS)


def redacted(env: dict) -> dict:
    return {k: ("***" if is_secret(k) else v) for k, v in env.items()}


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS; never a silent local Ray. Adds http:// when missing."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if address == "auto" or "://" not in address and address.endswith(":6379"):
        raise UserError(f"--address {address}: give the job server's http://HOST:8265 address, not the GCS port")
    return address if "://" in address else f"http://{address}"


def connect(address: str | None):
    """A JobSubmissionClient for the address, or a one-line UserError when it cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # ConnectionError, or a version/auth refusal from the server
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--address {url}: cannot reach a Ray job server ({reason[:200]})") from None


def forwarded_env(extra: dict | None = None, environ=os.environ) -> dict:
    env = {k: environ[k] for k in (*PLAIN_ENV, *SECRET_ENV) if environ.get(k)}
    env.update(extra or {})
    return env


def config_hash(command: str, args: list[str] | tuple[str, ...]) -> str:
    """sha256 over the command line and the content of any file it names (a recipe, say)."""
    h = hashlib.sha256(shlex.join([command, *args]).encode())
    for arg in args:
        path = PROJECT_ROOT / arg if not os.path.isabs(arg) else Path(arg)
        if arg.endswith((".yaml", ".yml", ".json")) and path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit] or "job"


def recipe_arg(recipe: str) -> str:
    """A recipe file must live under the project root to be uploaded with it; shipped names pass as-is."""
    path = Path(recipe)
    if not path.suffix:
        return recipe
    if not path.is_file():
        raise UserError(f"--recipe {recipe}: no such file")
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        raise UserError(f"--recipe {recipe}: outside {PROJECT_ROOT}, so it would not be uploaded with the job; "
                        "copy it under the project directory") from None


def build_spec(command: str, args: list[str], *, recipe: str | None = None, run_name: str | None = None,
               trigger: str | None = None, tags: dict | None = None, env: dict | None = None,
               pip: list[str] | None = None, submission_id: str | None = None, metadata: dict | None = None,
               environ=os.environ) -> JobSpec:
    if command not in COMMANDS:
        raise UserError(f"submit {command!r}: expected one of {', '.join(COMMANDS)}")
    args = list(args)
    if command == "train":
        run_name = run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
        args = (["--recipe", recipe_arg(recipe)] if recipe else []) + args
        args += ["--run-name", run_name, "--trigger", trigger or "manual"]
        args += [a for k, v in (tags or {}).items() for a in ("--tag", f"{k}={v}")]
    elif recipe or run_name or trigger or tags:
        raise UserError(f"submit {command}: --recipe, --run-name, --trigger and --tag apply to train only")
    digest = config_hash(command, args)
    if not submission_id:
        nonce = hashlib.sha256(f"{time.time_ns()}{os.getpid()}".encode()).hexdigest()[:6]
        submission_id = f"alexnet-{command}-{slug(run_name or time.strftime('%Y%m%d-%H%M%S'))}-{nonce}"
    job_env = forwarded_env(env, environ)
    # Ray does not export the submission id to the entrypoint; train tags its MLflow run with it.
    job_env["RAY_JOB_SUBMISSION_ID"] = submission_id
    commit = git_commit() or ""
    if commit:
        job_env[COMMIT_ENV] = commit  # the upload leaves .git behind: the job's run logs this commit
    meta = {"user": getpass.getuser(), "command": command, "config_hash": digest, "git_commit": commit,
            **({"run_name": run_name} if run_name else {}), **(metadata or {})}
    return JobSpec(command, tuple(args), submission_id, job_env, tuple(pip or ()),
                   {k: str(v) for k, v in meta.items()})


def describe(spec: JobSpec, address: str) -> str:
    lines = [f"submitting {spec.submission_id} to {address}", f"  entrypoint: {spec.entrypoint}"]
    if spec.env:
        lines.append("  env: " + " ".join(f"{k}={v}" for k, v in sorted(redacted(spec.env).items())))
    if spec.pip:
        lines.append("  pip: " + " ".join(spec.pip))
    return "\n".join(lines)


def submit(client, spec: JobSpec) -> str:
    """Submit; raises JobExists when the id is taken (so retried submits are idempotent)."""
    try:
        return client.submit_job(entrypoint=spec.entrypoint, submission_id=spec.submission_id,
                                 runtime_env=spec.runtime_env(), metadata=spec.metadata)
    except RuntimeError as err:
        if "already exists" in str(err):
            raise JobExists(spec.submission_id) from None
        raise


def job_status(client, submission_id: str) -> str | None:
    """PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED, or None when the cluster does not know the id."""
    try:
        return str(client.get_job_status(submission_id).value)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err) or "not found" in str(err).lower():
            return None
        raise


def job_info(client, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err) or "not found" in str(err).lower():
            raise UserError(f"job {submission_id}: no such job on this cluster") from None
        raise


def follow_logs(client, submission_id: str, out=None) -> None:
    """Stream the job's log until it ends (the tail closes when the job reaches a terminal state)."""

    out = out or sys.stdout

    async def tail():
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def wait_terminal(client, submission_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(client, submission_id)
        if status in TERMINAL or time.monotonic() > deadline:
            return status or "UNKNOWN"
        time.sleep(poll_s)


def outcome_line(client, submission_id: str, status: str) -> str:
    try:
        message = (job_info(client, submission_id).message or "").strip().splitlines()
    except (UserError, RuntimeError):
        message = []
    detail = f": {message[0][:300]}" if message else ""
    return f"job {submission_id} {status}{detail}"
