"""Run a project command as a Ray job on a cluster, through the Ray Jobs API.

The entrypoint is the same `python -m jobs.cli <command> ...` line one would type locally; the
repo root travels as the job's `working_dir`, and the submitter's MLflow/AWS settings that are not
secret (tracking URI, experiment, region, endpoints) travel in the runtime env's `env_vars`.
Secrets never travel with a job: Ray keeps a job's command line and runtime env in its job table,
which `ray job list`, `/api/jobs` and the dashboard show to anyone holding the cluster's token.
The job uses the nodes' own credentials (an instance role for S3, `~/.mlflow/credentials` for
MLflow: cluster.yaml writes them); secret variables in the submitter's environment are left out
and named, and an argument, `--env`, `--pip` line or URI carrying a credential is refused.
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
from pipelines.redaction import carries_credentials, is_secret, redact
from jobs.cluster import AGENT_WAIT_S, agent_not_ready, job_info, wait_for_agent
from pipelines.errors import UserError

COMMANDS = ("train", "tune", "ingest", "predict", "evaluate")
RUNS = {"train": "--run-name", "tune": "--name"}  # commands that start tracked runs, and their run-name option
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # holds pipelines/, alexnet/, jobs/

# Paths under the repo root never uploaded: environments, history, outputs, caches.
EXCLUDES = [".venv", "venv", ".git", "alexnet-work", "alexnet-demo", "mlruns", "mlartifacts", "*.db", "build", "dist",
            "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".devbundle", "benchmarks"]

# Copied from the submitter's environment when set: where things are, never a secret.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_S3_ENDPOINT_URL",
                 "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # an S3-compatible store is reached as S3 is
# Credentials a submitter often holds, which the job gets from its node instead (named when left out).
# The username goes with them: it would override the node's own login, not pair with its password.
NODE_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
JOB_TABLE = ("a job's command line and runtime env are stored in Ray's job table, which anyone with the "
             "cluster's token can read")
NODE_CREDENTIALS_HELP = ("give the cluster's nodes their own credentials (an instance role for S3, "
                         "~/.mlflow/credentials for MLflow: docs/cluster.md)")
# Ray's job supervisor SIGKILLs a stopped job's driver after RAY_JOB_STOP_WAIT_TIME_S (default 3 s);
# the driver needs longer to mark its MLflow run KILLED over HTTP and shut its Ray session down.
STOP_GRACE_ENV = {"RAY_JOB_STOP_WAIT_TIME_S": "30"}

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}  # `--wait` and `jobs status` exit codes


class JobExists(Exception):
    """A job with this submission id is already on the cluster (a repeated submit is a no-op)."""


@dataclass(frozen=True)
class JobSpec:
    command: str  # one of COMMANDS
    args: tuple[str, ...] = ()  # passed through to `python -m jobs.cli <command>`
    submission_id: str = ""
    env: dict = field(default_factory=dict)  # runtime env env_vars: never a secret
    withheld: tuple[str, ...] = ()  # secret variables of the submitter's environment left out
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


def forwarded_env(extra: dict | None = None, environ=os.environ) -> tuple[dict, tuple[str, ...]]:
    """(the job's env_vars, the secret variables of `environ` left out). `extra` (--env) and the
    forwarded URIs are checked: a secret there is refused, not dropped."""
    env = {**STOP_GRACE_ENV, **{k: environ[k] for k in FORWARDED_ENV if environ.get(k)}}
    for name, value in (extra or {}).items():
        if is_secret(name) or name in NODE_CREDENTIALS or redact(value) != value:
            raise UserError(f"--env {name}={redact(value, name)}: {JOB_TABLE}; {NODE_CREDENTIALS_HELP}")
        env[name] = value
    for name, value in env.items():
        if carries_credentials(value):
            raise UserError(f"{name}={redact(value)} carries a password: {JOB_TABLE}; put the server's address "
                            f"alone in {name} and {NODE_CREDENTIALS_HELP}")
    return env, tuple(k for k in NODE_CREDENTIALS if environ.get(k))


def refuse_credentials(args: list[str] | tuple[str, ...], what: str = "argument") -> None:
    """A job's command line (and --pip lines, also in the job table) must hold no credential:
    refused, naming the argument masked."""
    for i, arg in enumerate(args):
        secret_option = arg.startswith("--") and "=" not in arg and is_secret(arg) and i + 1 < len(args)
        if redact(arg) != arg or secret_option:
            raise UserError(f"{what} {redact(arg)!r} carries a credential: {JOB_TABLE}; {NODE_CREDENTIALS_HELP}")


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


def recipe_arg(recipe: str, option: str = "--recipe") -> str:
    """A recipe (or space) file must live under the project root to be uploaded with it; shipped
    names pass as-is. Returns its path relative to the root, where the job runs."""
    path = Path(recipe)
    if not path.suffix and option == "--recipe":
        return recipe
    if not path.is_file():
        raise UserError(f"{option} {recipe}: no such file")
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        raise UserError(f"{option} {recipe}: outside {PROJECT_ROOT}, so it would not be uploaded with the job; "
                        "copy it under the project directory") from None


def _uploaded_files(args: list[str]) -> list[str]:
    """A sweep's --space file, like a recipe file, is read by the job from the uploaded project."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--space":
            out[i + 1] = recipe_arg(out[i + 1], "--space")
    return out


def build_spec(command: str, args: list[str], *, recipe: str | None = None, run_name: str | None = None,
               trigger: str | None = None, tags: dict | None = None, env: dict | None = None,
               pip: list[str] | None = None, submission_id: str | None = None, metadata: dict | None = None,
               environ=os.environ) -> JobSpec:
    if command not in COMMANDS:
        raise UserError(f"submit {command!r}: expected one of {', '.join(COMMANDS)}")
    args = list(args)
    refuse_credentials(pip or (), "--pip")
    # Why the run happened, for the commands that start tracked runs.
    why = ["--trigger", trigger or "manual"] + [a for k, v in (tags or {}).items() for a in ("--tag", f"{k}={v}")]
    if command == "tune" and "--resume" in args:
        # A sweep continued as it was asked (alexnet tune --resume refuses what would change it):
        # no recipe or new name to add, only why this job ran.
        if recipe or run_name:
            raise UserError("submit tune -- --resume FOLDER continues a sweep as it was asked: "
                            "--recipe and --run-name cannot change it")
        args += why
    elif command in RUNS:
        if not recipe and "--recipe" not in args:
            raise UserError(f"submit {command}: --recipe is required (a shipped recipe such as paper or torchvision, "
                            "or a YAML file under the project directory)")
        run_name = run_name or f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        args = (["--recipe", recipe_arg(recipe)] if recipe else []) + _uploaded_files(args)
        args += [RUNS[command], run_name, *why]
    elif recipe or run_name or trigger or tags:
        raise UserError(f"submit {command}: --recipe, --run-name, --trigger and --tag apply to train and tune only")
    refuse_credentials(args)  # the whole command line, a --tag or --run-name included
    digest = config_hash(command, args)
    if not submission_id:
        nonce = hashlib.sha256(f"{time.time_ns()}{os.getpid()}".encode()).hexdigest()[:6]
        submission_id = f"alexnet-{command}-{slug(run_name or time.strftime('%Y%m%d-%H%M%S'))}-{nonce}"
    job_env, withheld = forwarded_env(env, environ)
    # Ray does not export the submission id to the entrypoint; train tags its MLflow run with it.
    job_env["RAY_JOB_SUBMISSION_ID"] = submission_id
    commit = git_commit() or ""
    if commit:
        job_env[COMMIT_ENV] = commit  # the upload leaves .git behind: the job's run logs this commit
    meta = {"user": getpass.getuser(), "command": command, "config_hash": digest, "git_commit": commit,
            **({"run_name": run_name} if run_name else {}), **(metadata or {})}
    return JobSpec(command, tuple(args), submission_id, job_env, withheld, tuple(pip or ()),
                   {k: str(v) for k, v in meta.items()})


def describe(spec: JobSpec, address: str) -> str:
    lines = [f"submitting {spec.submission_id} to {redact(address)}",
             f"  entrypoint: {redact(spec.entrypoint)}"]
    if spec.env:
        lines.append("  env: " + " ".join(f"{k}={v}" for k, v in sorted(((k, redact(v, k)) for k, v in spec.env.items()))))
    if spec.pip:
        lines.append("  pip: " + " ".join(spec.pip))
    if spec.withheld:
        lines.append(f"  not sent (secrets stay out of Ray's job table; the job uses its node's credentials): "
                     f"{' '.join(spec.withheld)}")
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
