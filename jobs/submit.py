"""Run a project command as a Ray job on a cluster, through the Ray Jobs API.

The entrypoint is the same `python -m jobs.cli <command> ...` line one would type locally; the
repo root travels as the job's `working_dir`, and the submitter's MLflow/AWS settings travel in
the runtime env's `env_vars` (copied from the environment, never from files, and printed through
`pipelines.redaction`). Credentials never go on the command line, which Ray keeps in its job table
for anyone who can list jobs: a `--tracking-uri` carrying them moves into the job's
MLFLOW_TRACKING_URI (the commands' default), and any other argument carrying them is refused.
The connection itself (address, token, timeouts) is `jobs.cluster`.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.track.provenance import COMMIT_ENV, git_commit
from pipelines.redaction import is_secret, redact
from jobs.cluster import AGENT_WAIT_S, agent_not_ready, job_info, wait_for_agent
from pipelines.errors import UserError

COMMANDS = ("train", "ingest", "predict", "evaluate")
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # holds pipelines/, alexnet/, jobs/

# Paths under the repo root never uploaded: environments, history, outputs, caches.
EXCLUDES = [".venv", "venv", ".git", "alexnet-work", "mlruns", "mlartifacts", "*.db", "build", "dist",
            "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".devbundle", "benchmarks"]

# Copied from the submitter's environment when set (printed through pipelines.redaction).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_S3_ENDPOINT_URL",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # an S3-compatible store is reached as S3 is
# Ray's job supervisor SIGKILLs a stopped job's driver after RAY_JOB_STOP_WAIT_TIME_S (default 3 s);
# the driver needs longer to mark its MLflow run KILLED over HTTP and shut its Ray session down.
STOP_GRACE_ENV = {"RAY_JOB_STOP_WAIT_TIME_S": "30"}
# option -> the variable that the commands having it read as its default
URI_OPTIONS = {"--tracking-uri": "MLFLOW_TRACKING_URI"}
URI_COMMANDS = ("train", "predict", "evaluate")

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


def forwarded_env(extra: dict | None = None, environ=os.environ) -> dict:
    env = {**STOP_GRACE_ENV, **{k: environ[k] for k in FORWARDED_ENV if environ.get(k)}}
    env.update(extra or {})
    return env


def credentials_to_env(command: str, args: list[str]) -> tuple[list[str], dict]:
    """(args without credentials, env vars carrying them): a URI option whose value holds
    credentials moves into the variable its command reads instead; any other argument that holds
    credentials is refused, naming it (masked)."""
    kept, env = [], {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in URI_OPTIONS and command in URI_COMMANDS and (eq or i + 1 < len(args)):
            value = value if eq else args[i + 1]
            step = 1 if eq else 2
            if redact(value) != value:
                env[URI_OPTIONS[name]] = value
            else:
                kept += args[i:i + step]
            i += step
            continue
        if redact(arg) != arg or (arg.startswith("--") and is_secret(arg) and i + 1 < len(args)):
            raise UserError(f"argument {redact(arg)!r} carries a credential, and a job's command line is "
                            f"stored in Ray's job table: pass it in the environment instead (MLFLOW_TRACKING_*, "
                            f"AWS_*, or --env NAME=VALUE)")
        kept.append(arg)
        i += 1
    return kept, env


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
    args, credential_env = credentials_to_env(command, list(args))
    if command == "train":
        if not recipe and "--recipe" not in args:
            raise UserError("submit train: --recipe is required (a shipped recipe such as paper or torchvision, "
                            "or a YAML file under the project directory)")
        run_name = run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
        args = (["--recipe", recipe_arg(recipe)] if recipe else []) + args
        args += ["--run-name", run_name, "--trigger", trigger or "manual"]
        args += [a for k, v in (tags or {}).items() for a in ("--tag", f"{k}={v}")]
        credentials_to_env(command, args)  # a --tag or --run-name may carry one too
    elif recipe or run_name or trigger or tags:
        raise UserError(f"submit {command}: --recipe, --run-name, --trigger and --tag apply to train only")
    digest = config_hash(command, args)
    if not submission_id:
        nonce = hashlib.sha256(f"{time.time_ns()}{os.getpid()}".encode()).hexdigest()[:6]
        submission_id = f"alexnet-{command}-{slug(run_name or time.strftime('%Y%m%d-%H%M%S'))}-{nonce}"
    job_env = {**forwarded_env(env, environ), **credential_env}
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
    lines = [f"submitting {spec.submission_id} to {redact(address)}",
             f"  entrypoint: {redact(spec.entrypoint)}"]
    if spec.env:
        lines.append("  env: " + " ".join(f"{k}={v}" for k, v in sorted(((k, redact(v, k)) for k, v in spec.env.items()))))
    if spec.pip:
        lines.append("  pip: " + " ".join(spec.pip))
    return "\n".join(lines)


def submit(client, spec: JobSpec, agent_wait_s: float = AGENT_WAIT_S) -> str:
    """Submit once the head's job agent is ready (jobs.cluster.wait_for_agent, at most
    `agent_wait_s`); raises JobExists when the id is taken (so retried submits are idempotent)
    and AgentNotReady when the agent never got ready (nothing was submitted)."""
    deadline = time.monotonic() + agent_wait_s
    wait_for_agent(client, agent_wait_s)
    while True:
        try:
            return client.submit_job(entrypoint=spec.entrypoint, submission_id=spec.submission_id,
                                     runtime_env=spec.runtime_env(), metadata=spec.metadata)
        except RuntimeError as err:
            if "already exists" in str(err):
                raise JobExists(spec.submission_id) from None
            if "No available agent" not in str(err):
                raise
            # The agent was ready a moment ago (a restarting head): the job was not created, so
            # sending it again is safe, within the same wait.
            if time.monotonic() >= deadline:
                raise agent_not_ready(client, agent_wait_s) from None
            wait_for_agent(client, max(0.0, deadline - time.monotonic()))


def outcome_line(client, submission_id: str, status: str) -> str:
    try:
        message = (job_info(client, submission_id).message or "").strip().splitlines()
    except (UserError, RuntimeError):
        message = []
    detail = f": {redact(message[0][:300])}" if message else ""
    return f"job {submission_id} {status}{detail}"
