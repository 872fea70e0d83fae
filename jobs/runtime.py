"""Where a run's Ray comes from, and the work directory's layout.

Inside a Ray job (RAY_ADDRESS set by the job server) we join that cluster; otherwise a local
Ray is started in-process (Ray's defaults, token authentication included) and always shut down on
the way out, Ctrl-C and SIGTERM included, so no raylet or worker process outlives the command.
SIGTERM (`alexnet jobs stop`, `kill`, Kubernetes) ends a command the way Ctrl-C does: its MLflow
run ends KILLED and the CLI prints one line, with no stack dump.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> Workdir:
        """The work directory's layout under `path`, which is checked but not created yet."""
        root = Path(path).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise UserError(f"--workdir {root} is a file, not a directory")
        return cls(root)

    def make(self) -> Workdir:
        """Create the directory or fail with one clear line (exit 2), before any work starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise UserError(f"--workdir {self.root} is not writable: {err.strerror or err}") from None
        return self

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> str:
        return (self.root / "mlartifacts").as_uri()

    @property
    def runs(self) -> Path:
        return self.root / "runs"  # Ray Train storage_path: one folder per run name

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"


def prepare_workdir(path: str | os.PathLike) -> Workdir:
    """Create the work directory or fail with one clear line (exit 2), before any work starts."""
    return Workdir.at(path).make()


@contextmanager
def run_session(work: Workdir):
    """What a training run enters once the inputs that need neither disk nor Ray are checked: its
    work directory, made now (so a refused run leaves none behind), then Ray."""
    work.make()
    with ray_session():
        yield


# MLflow's HTTP client retries for minutes by default (7 retries, backoff factor 2, 120 s
# timeout): a dead server would hang promote, register or ui for minutes, and stall rank 0's epoch
# loop. MetricLogger keeps and re-sends metrics itself, so each call may fail fast. Set by
# jobs.cli for every command, before ray.init so the local Ray's workers inherit it; a user's
# own setting wins.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def configure_mlflow_client() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt: the cleanup that Ctrl-C runs (a run
    marked KILLED, child processes stopped) runs for `kill` and `alexnet jobs stop` too."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ray_session(num_cpus: int | None = None):
    """Join the job's cluster when run as a Ray job, else start (and always stop) a local Ray.
    Unless --verbose, Ray's and MLflow's logs go to files, not the terminal (jobs/output.py)."""
    import ray
    import ray.data  # configures Ray Data's loggers, which route_library_logs then redirects

    from jobs import output

    if ray.is_initialized():
        yield
        return
    configure_mlflow_client()
    quiet = not output.verbose()
    log = output.LogFile()
    if quiet:
        from alexnet.train.progress import PLAIN_EVERY_S

        output.route_library_logs(log)
        os.environ.setdefault(output.RAY_DATA_INTERVAL_VAR, str(int(PLAIN_EVERY_S)))
    original = signal.getsignal(signal.SIGTERM)
    restore_stderr = None
    try:
        # ray.init installs its own SIGTERM handler (sys.exit, which ends the MLflow run FAILED
        # with a stack dump): ours is installed after it.
        try:
            if os.environ.get("RAY_ADDRESS"):
                context = ray.init(log_to_driver=not quiet)
            else:
                context = ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", log_to_driver=not quiet)
        except BaseException:
            log.show_held()  # what Ray said while failing to start belongs with the error
            raise
        data = ray.data.DataContext.get_current()
        data.enable_progress_bars = True  # a bar on a terminal, else a line every 30 s (jobs/output.py)
        data.enable_operator_progress_bars = not quiet  # one bar per execution, not one per operator
        if quiet:
            # log_to_driver=False keeps the workers' output in Ray's files; the raylet's own warnings
            # (e.g. "N worker processes have been started", which a sweep's trials always cause)
            # reach the driver by another channel, which only this flag closes (ray.util.rpdb uses
            # it too). They stay in the session's raylet.out.
            ray._private.worker._worker_logs_enabled = False
            log.open(Path(context.address_info["session_dir"]) / "logs" / f"alexnet-driver-{os.getpid()}.log")
            output.route_library_logs(log)  # and what ray.init configured
            restore_stderr = output.native_stderr_to(log.path)
        with sigterm_as_interrupt():
            yield
    finally:
        ray.shutdown()
        ray._private.worker._worker_logs_enabled = True
        if restore_stderr is not None:
            restore_stderr()
        signal.signal(signal.SIGTERM, original)


def add_store_options(parser) -> None:
    """--workdir / --tracking-uri for the commands that read an existing MLflow store."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workdir", help="work directory whose SQLite MLflow store to use")
    group.add_argument("--tracking-uri", help="MLflow tracking URI; with neither option: $MLFLOW_TRACKING_URI, "
                                              "else ./alexnet-work's store")


def existing_store(args) -> str:
    """The tracking URI named by --tracking-uri, else the work directory's SQLite store, which must exist."""
    if args.tracking_uri:
        return args.tracking_uri
    if not args.workdir and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    work = Workdir(Path(args.workdir or "alexnet-work").expanduser().absolute())
    if not (work.root / "mlflow.db").is_file():
        raise UserError(f"--workdir {work.root}: no MLflow store (mlflow.db) there; train first or pass --tracking-uri")
    return work.tracking_uri
