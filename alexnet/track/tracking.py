"""The one path to MLflow: the driver opens and closes the run, rank 0 logs into it.

`tracked_run` is the only place a run starts and ends, so a crash still ends it (FAILED, or
KILLED on Ctrl-C) instead of leaving it RUNNING. Workers get the run id, never start runs.
A run that is started again under the same name (Ray resuming its checkpoints) continues the
same MLflow run instead of creating a second one.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import PurePath
from typing import Callable

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipelines.dataset import SCHEMA
from pipelines.errors import UserError, first_line
from pipelines.redaction import redact

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
LOCAL_STORE_SCHEMES = ("sqlite:", "file:")


# Waits between the attempts of a driver-side call that must land (the final model upload,
# registration, the run's status): about a minute of outage is ridden out.
RETRY_WAITS_S = (5.0, 15.0, 40.0)


class TrackingUnavailable(UserError):
    """The tracking store did not answer, or refused, a driver-side call that cannot be skipped
    (the CLI prints it as one line naming what to fix)."""


def is_tracking_error(err: BaseException) -> bool:
    """Raised by MLflow's client or through it (an outage, a refusal, a store error), as opposed
    to a bug in this project, which keeps its traceback, or another service's error (Ray's)."""
    return isinstance(err, (MlflowException, TrackingUnavailable)) or _raised_in(err, f"{os.sep}mlflow{os.sep}")


def is_outage(err: BaseException) -> bool:
    """Worth retrying: the store did not answer or was busy, rather than refusing the request."""
    return problem(err) == "outage"


def problem(err: BaseException) -> str | None:
    """What a user must fix about the store: "outage" (start it), "refused" (credentials),
    "bad-uri" (another --tracking-uri), "cannot-open" (a store file's folder); None: not theirs."""
    if isinstance(err, TrackingUnavailable) and err.__cause__ is not None:
        return problem(err.__cause__)
    if not is_tracking_error(err):
        return None
    text = str(err)
    code = getattr(err, "error_code", "")
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "error code 401" in text or "error code 403" in text:
        return "refused"
    if type(err).__name__.startswith("Unsupported") or "unsupported URI" in text or "Invalid URI" in text:
        return "bad-uri"
    if "unable to open database file" in text or (isinstance(err, OSError) and not isinstance(
            err, (ConnectionError, TimeoutError)) and _raised_in(err, f"{os.sep}mlflow{os.sep}store{os.sep}")):
        return "cannot-open"
    if (code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or isinstance(err, (ConnectionError, TimeoutError))
            or any(s in text for s in ("failed with exception", "Max retries exceeded", "Connection refused",
                                       "Failed to establish", "timed out", "database is locked", "error code 50"))):
        return "outage"
    return None


def _raised_in(err: BaseException, path_part: str) -> bool:
    """Whether `err` passed through code whose file path contains `path_part` (e.g. MLflow's
    store code: a file error there is the store's path, not a bug here)."""
    tb = err.__traceback__
    while tb is not None:
        if path_part in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


# What a user does about each kind of store problem (`problem`), in the one line `explain` writes.
ADVICE = {
    "refused": "MLflow at {where} refused access ({text}); set MLFLOW_TRACKING_USERNAME and "
               "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for a user allowed to write there",
    "bad-uri": "--tracking-uri {where} is not a store MLflow can open; use sqlite:///ABSOLUTE/PATH.db "
               "or http(s)://HOST:PORT",
    "cannot-open": "MLflow could not open the store {where} ({text}); check that its folder exists and is "
                   "writable, or pass another --tracking-uri",
    "outage": "MLflow at {where} did not answer ({text}); start the tracking server or pass another --tracking-uri",
}


def explain(err: BaseException, tracking_uri: str) -> str:
    """What went wrong with the store at `tracking_uri`, and what to do about it, in one line."""
    template = ADVICE.get(problem(err), "MLflow at {where} failed: {text}")
    return template.format(where=redact(tracking_uri), text=first_line(err))


def retrying(call, *, what: str):
    """`call()`, retried through a short outage (RETRY_WAITS_S); a refusal or a bug is not retried."""
    for wait in (*RETRY_WAITS_S, None):
        try:
            return call()
        except Exception as err:
            if wait is None or not is_outage(err):
                raise
            print(f"[tracking] {what}: {first_line(err)}; retrying in {wait:g} s", file=sys.stderr, flush=True)
            time.sleep(wait)


def client_for(tracking_uri: str) -> MlflowClient:
    """A client whose model registry is the same store: MlflowClient would otherwise use a
    registry URI set globally earlier in the process (mlflow.set_registry_uri)."""
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def is_local_store(tracking_uri: str) -> bool:
    """SQLite and file stores live on one machine's disk; other nodes cannot write to them."""
    return tracking_uri.startswith(LOCAL_STORE_SCHEMES) or "://" not in tracking_uri


def flatten_params(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; values redacted and cut to MLflow's maximum length."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, name + "."))
            continue
        text = redact(value, name)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 20] + f"...[{len(text)} chars]"
        flat[name] = text
    return flat


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def find_run(client: MlflowClient, experiment_id: str, run_name: str):
    """The newest run of this experiment with this run name, or None."""
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{escaped}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def open_run(tracking_uri: str, *, experiment: str, run_name: str, tags: dict | None = None,
             artifact_location: str | None = None) -> tuple[str, bool]:
    """(run id, resumed): reuse the experiment's run of this name, else create one."""
    try:
        client = client_for(tracking_uri)
        exp_id = get_or_create_experiment(client, experiment, artifact_location)
        existing = find_run(client, exp_id, run_name)
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            resumes = int(existing.data.tags.get("resumes", "0")) + 1
            set_tags(tracking_uri, run_id, {**(tags or {}), "resumes": resumes})
            return run_id, True
        safe = {k: redact(v, k) for k, v in (tags or {}).items()}
        return client.create_run(exp_id, run_name=run_name, tags=safe).info.run_id, False
    except Exception as err:
        if not is_tracking_error(err):
            raise
        raise TrackingUnavailable(explain(err, tracking_uri)) from err


def finish_run(tracking_uri: str, run_id: str, status: str, *, retry: bool = True) -> bool:
    """Set the final status, retrying through a short outage; say so clearly if it never lands."""
    try:
        call = lambda: client_for(tracking_uri).set_terminated(run_id, status)  # noqa: E731
        retrying(call, what=f"marking MLflow run {run_id} {status}") if retry else call()
        return True
    except Exception as err:
        if not is_tracking_error(err):
            raise
        print(f"[tracking] could not mark MLflow run {run_id} {status} ({first_line(err)}); "
              f"it shows RUNNING until set by hand", file=sys.stderr)
        return False


@contextmanager
def using_store(tracking_uri: str | None):
    """MLflow's fluent API (start_run, log_model, register_model) against this store, then the
    process's previous store again: mlflow.set_tracking_uri also rewrites MLFLOW_TRACKING_URI,
    which later commands in the same process (tests, the scheduler) would otherwise inherit."""
    if not tracking_uri:
        yield
        return
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri,
             {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def tracked_run(tracking_uri: str, *, experiment: str, run_name: str, tags: dict | None = None,
                artifact_location: str | None = None):
    """Open (or resume, by run name) a run, yield its id, and always give it a final status."""
    run_id, _ = open_run(tracking_uri, experiment=experiment, run_name=run_name, tags=tags,
                         artifact_location=artifact_location)
    try:
        yield run_id
    except KeyboardInterrupt:
        # Ctrl-C may land mid-call into the store (the run opening, params being logged): whatever
        # that leaves behind, marking the run is best effort and the interrupt still wins (exit 130).
        try:
            finish_run(tracking_uri, run_id, "KILLED", retry=False)
        except Exception as err:
            print(f"[tracking] could not mark MLflow run {run_id} KILLED ({first_line(err)}); "
                  f"it shows RUNNING until set by hand", file=sys.stderr)
        raise
    except BaseException:
        finish_run(tracking_uri, run_id, "FAILED")
        raise
    finish_run(tracking_uri, run_id, "FINISHED")


def log_params(tracking_uri: str, run_id: str, params: dict) -> list[str]:
    """Log params (flattened, redacted, cut) in batches of 100, MLflow's limit.

    A resumed run keeps the values it started with: MLflow refuses to change a param, so keys
    already logged with another value are skipped and returned (the caller may warn)."""
    client = client_for(tracking_uri)
    flat = flatten_params(params)
    logged = client.get_run(run_id).data.params
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    items = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    return changed


def set_tags(tracking_uri: str, run_id: str, tags: dict) -> None:
    items = [RunTag(k, redact(v, k)) for k, v in tags.items()]
    client_for(tracking_uri).log_batch(run_id, tags=items)


def log_dataset(tracking_uri: str, run_id: str, info) -> None:
    """The Parquet dataset as the run's input (MLflow dataset tracking): its folder name, its
    version as the digest, where it lives, the shards' column schema and the images per split."""
    types = {"string": "string", "binary": "binary", "int32": "integer", "int64": "long", "float": "float",
             "double": "double", "bool": "boolean"}
    schema = Schema([ColSpec(types[str(f.type)], f.name) for f in SCHEMA])
    with warnings.catch_warnings():  # MLflow registers its local source twice and warns about it
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(info.path)
    meta = MetaDataset(source, name=PurePath(info.path.rstrip("/")).name, digest=info.version, schema=schema).to_dict()
    profile = {"num_rows": info.num_images, "num_classes": info.num_classes,
               "splits": {split: info.split_size(split) for split in sorted(info.counts)}}
    dataset = Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"],
                      source=meta["source"], schema=meta["schema"], profile=json.dumps(profile))
    client_for(tracking_uri).log_inputs(run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])


class MetricLogger:
    """Rank 0's metric writer. A tracking outage must not kill a long training run: failed
    writes are kept and re-sent with the next call; the failure is told once, through `say`
    (a line for the user; default: this process's stderr)."""

    def __init__(self, tracking_uri: str, run_id: str, say: Callable[[str], None] | None = None):
        self.client = client_for(tracking_uri)
        self.say = say or _to_stderr
        self.run_id = run_id
        self.pending: list[Metric] = []
        self.failing = False

    def log(self, metrics: dict, step: int) -> bool:
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        try:
            while self.pending:  # drop each batch once it landed: a retry never duplicates it
                self.client.log_batch(self.run_id, metrics=self.pending[:1000])
                del self.pending[:1000]
        except Exception as err:  # any transport or server error: keep the metrics, go on training
            if not self.failing:
                self.say(f"[tracking] MLflow unreachable ({first_line(err)}); "
                         f"training continues, metrics are kept and re-sent")
            self.failing = True
            return False
        if self.failing:
            self.say("[tracking] MLflow reachable again; back-filled the kept metrics")
        self.failing = False
        return True


    def logged_steps(self, key: str) -> set[int]:
        """The steps at which `key` already has a point in the run; empty when MLflow cannot say
        (then the caller logs as if nothing were there)."""
        try:
            return {m.step for m in self.client.get_metric_history(self.run_id, key)}
        except Exception as err:  # an outage at start: training goes on, as with log()
            self.say(f"[tracking] could not read the run's logged epochs ({first_line(err)})")
            return set()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def start_system_metrics(tracking_uri: str, run_id: str, *, interval_s: float, node_id: str | None,
                         resume: bool, say: Callable[[str], None] | None = None):
    """MLflow's system-metrics sampler (CPU, memory, disk, network; GPU utilisation and memory
    when `nvidia-ml-py` is installed) logging `system/[node_id/]*` to the run every `interval_s`
    seconds, steps continuing after a restart when `resume`. Returns the monitor (call `.finish()`),
    or None when it cannot start: system metrics never stop training. It stops by itself when the
    run ends or the tracking server cannot be reached (training metrics are still back-filled)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import \
            SystemMetricsMonitor  # deferred: needs psutil, optional

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                       resume_logging=resume, node_id=node_id, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:  # a missing optional dependency or an unreachable server
        (say or _to_stderr)(f"[tracking] system metrics off ({first_line(err)})")
        return None
