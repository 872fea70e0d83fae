"""Driver side of a training run: check its inputs, find where it resumes, place the workers,
run TorchTrainer and name the checkpoints it left.

`check_inputs` and `resume_point` need no Ray; `fit` is called with Ray initialised (a local Ray
or a cluster's, see jobs.runtime), once everything a user can get wrong has been checked.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer

from alexnet import ARCHITECTURES
from alexnet.config import Config
from alexnet.train import checkpoint
from alexnet.train.epochs import NonFiniteLoss
from alexnet.train.loop import LoopInputs, train_loop
from alexnet.train.progress import Display, RunView
from pipelines.dataset import DatasetInfo, open_dataset
from pipelines.errors import UserError, first_line
from pipelines.read.augment import TrainPreset
from pipelines.read.loader import StartEpoch, train_dataset, val_dataset

# Share of a CPU-only cluster's CPUs left to Ray Data when cpus_per_worker is 0 (auto).
DATA_CPU_SHARE = 0.5


class TrainingError(RuntimeError):
    """The run itself failed, not its input: e.g. a worker raised an unexpected error (a bug,
    which keeps its traceback)."""


class TrainingDiverged(TrainingError, UserError):
    """The loss became NaN or inf: settings to change, not a bug (one line, exit 2)."""


@dataclass(frozen=True)
class Placement:
    use_gpu: bool
    cpus_per_worker: float
    decode_on_device: bool = False  # train workers decode and augment on their GPUs (data.decode=gpu with GPUs)


class ResumePoint(NamedTuple):
    checkpoint: str  # a checkpoint folder, a path or a URI
    epoch: int  # its last completed epoch, 0-based: training continues at epoch + 1


@dataclass(frozen=True)
class Outcome:
    run_name: str
    val_top1: float
    epochs: int
    best_checkpoint: str
    latest_checkpoint: str
    storage: str
    resumed_from_epoch: int | None = None  # last completed epoch (0-based) of the checkpoint resumed from
    best_epoch: int = 0  # the epoch (0-based) of best_checkpoint, whose val top-1 is val_top1


def plan_placement(cfg: Config, cluster: dict) -> Placement:
    """Decide GPU use and each worker's CPU reservation from the cluster's resources.

    Two workers asking 1 CPU each on a 2-CPU machine leave Ray Data nothing and `fit()` hangs,
    so on CPU-only clusters the workers together reserve at most half the CPUs."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    n = cfg.run.num_workers
    use_gpu = {"auto": gpus > 0, "true": True, "false": False}[cfg.run.use_gpu]
    if use_gpu and gpus < n:
        raise UserError(f"run.num_workers={n} with GPUs needs {n} GPUs; the cluster has {gpus:g}")
    if cfg.run.cpus_per_worker > 0:
        cpu = cfg.run.cpus_per_worker
    elif use_gpu:
        cpu = 1.0
    else:
        cpu = max(0.01, round(cpus * (1 - DATA_CPU_SHARE) / n, 2))
    if cpu * n >= cpus and not use_gpu:
        raise UserError(
            f"run.num_workers={n} x run.cpus_per_worker={cpu:g} CPUs leaves no CPU for Ray Data on a "
            f"{cpus:g}-CPU cluster; lower run.cpus_per_worker (0 = automatic)")
    return Placement(use_gpu, cpu, decode_on_device=cfg.data.decode == "gpu" and use_gpu)


def check_inputs(cfg: Config) -> DatasetInfo:
    """Everything that does not need Ray: architecture, dataset, batch/worker arithmetic."""
    if cfg.model.arch not in ARCHITECTURES:
        raise UserError(f"model.arch={cfg.model.arch!r}: supported architectures are {', '.join(ARCHITECTURES)}")
    if not cfg.data.path:
        raise UserError("data.path is not set: pass --data DATASET_DIR (a directory written by `alexnet ingest`)")
    info = open_dataset(cfg.data.path)
    if info.split_size("val") == 0:
        raise UserError(f"{info.path}: the val split is empty; re-ingest with --val-fraction > 0")
    check_batches(cfg, info)
    return info


def check_batches(cfg: Config, info: DatasetInfo) -> None:
    """The batch and worker arithmetic of `cfg` against the dataset's training split."""
    per_worker = cfg.optim.batch_size // cfg.run.num_workers
    if info.split_size("train") < cfg.optim.batch_size:
        raise UserError(f"optim.batch_size={cfg.optim.batch_size} is larger than the {info.split_size('train')} "
                        f"training images of {info.path}")
    if per_worker < 1:
        raise UserError(f"optim.batch_size={cfg.optim.batch_size} gives no images per worker")


def steps_per_epoch(images: int, workers: int, per_worker: int) -> int:
    """K = floor(floor(N / W) / B): the batches each of W workers takes per epoch (equal counts, as
    DDP needs), B images per worker per step."""
    return (images // workers) // per_worker


def fit(cfg: Config, info: DatasetInfo, preset: TrainPreset, *, run_name: str, storage: str | Path,
        tracking_uri: str, run_id: str, resume: ResumePoint | None = None, share: dict | None = None,
        callbacks: tuple = ()) -> Outcome:
    """Train `cfg` on `info` with the augmentation `preset` as Ray Train run `run_name`, from
    `resume` (resume_point) if any; metrics go to MLflow run `run_id` from rank 0.
    share: the resources ({"CPU": n, "GPU": m}) this run may use, its workers and its Ray Data
    tasks together, when it shares the cluster with others (a sweep's trials); None: the whole
    cluster. callbacks: more ray.train.UserCallbacks (a sweep's report to Ray Tune)."""
    placement = plan_placement(cfg, share or ray.cluster_resources())
    if cfg.data.decode == "gpu" and not placement.decode_on_device:
        print("data.decode=gpu: this run has no GPU; Ray Data's CPU workers decode instead", flush=True)
    first_epoch = resume.epoch + 1 if resume is not None else 0
    if resume is not None:
        print(f"resuming run {run_name} at epoch {first_epoch + 1}/{cfg.optim.epochs}, from its checkpoint of epoch "
              f"{resume.epoch + 1}: {resume.checkpoint}", flush=True)
    start = StartEpoch.create()
    per_worker = cfg.optim.batch_size // cfg.run.num_workers
    steps = steps_per_epoch(info.split_size("train"), cfg.run.num_workers, per_worker)
    print(f"training: {cfg.run.num_workers} worker{'s' if cfg.run.num_workers > 1 else ''} on "
          f"{'GPU' if placement.use_gpu else 'CPU'}, {steps} steps of {cfg.optim.batch_size} images per epoch", flush=True)
    datasets = {
        # The whole run's epochs in one stream; a worker group restarted later reads its own start.
        "train": train_dataset(info, preset, seed=cfg.data.seed, epochs=max(1, cfg.optim.epochs - first_epoch),
                               per_epoch=steps * per_worker * cfg.run.num_workers, start=start,
                               decode_on_device=placement.decode_on_device),
        "val": val_dataset(info, crop=cfg.data.crop, resize=cfg.data.resize, ten_crop=cfg.data.ten_crop_eval),
    }
    for ds in datasets.values():
        ds.context.enable_progress_bars = False  # the run's own bar (alexnet.train.progress) shows the epoch
    view = RunView(Display(epochs=cfg.optim.epochs, steps=steps, images_per_step=per_worker * cfg.run.num_workers))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": LoopInputs(
            config=cfg, dataset_version=info.version, num_classes=info.num_classes,
            pixel_mean=tuple(info.pixel_mean), pixel_std=tuple(info.pixel_std),
            tracking_uri=tracking_uri, run_id=run_id, run_name=run_name, storage=str(storage), start=start,
            steps_per_epoch=steps, progress=view.channel,
            device_preset=preset if placement.decode_on_device else None,
            initial_checkpoint=resume.checkpoint if resume is not None else None)},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=placement.use_gpu,
                                     resources_per_worker={"CPU": placement.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints,
                                               checkpoint_score_attribute="val_top1", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=[view.reporter(first_epoch=first_epoch, max_failures=cfg.run.max_failures), *callbacks],
        ),
        datasets=datasets,
        dataset_config=_data_config(share, cfg.run.num_workers * placement.cpus_per_worker),
    )
    last_epoch = None
    try:
        with _controller_poll(CONTROLLER_POLL_S):
            result = _fit_interruptibly(trainer, poll=view.poll)
        last_epoch = cfg.optim.epochs - 1
    except TrainingFailedError as err:
        raise _training_error(err) from err
    finally:
        view.close(last_epoch=last_epoch)  # a finished run's last epoch line is printed before anything else
    return _outcome(result, run_name, str(storage), resume)


def _data_config(share: dict | None, reserved_cpus: float) -> DataConfig:
    """Ray Data's default for Train's datasets; under a `share`, capped to the share's CPUs that
    the workers leave, so concurrent runs do not each schedule tasks as if the cluster were theirs."""
    if share is None:
        return DataConfig()
    options = DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(cpu=max(1.0, share.get("CPU", 0) - reserved_cpus))
    return DataConfig(execution_options=options)


def resume_point(cfg: Config, storage: str, run_name: str, resume_from: str | None, *,
                 num_classes: int) -> ResumePoint | None:
    """Where training continues from: this run's own latest checkpoint (same run name and storage:
    a re-run after a crash or a kill), else `--resume-from PATH`, else None (a fresh start).
    A checkpoint whose architecture, class count or optimiser differs from `cfg` is refused here,
    before any Ray resources are requested, instead of failing inside a worker.

    Ray Train restores the run's checkpoint manager from storage_path/run_name itself and hands the
    workers its latest checkpoint; the path found here is the fallback the workers use when Ray has
    none, and what the caller is told (Outcome.resumed_from_epoch)."""
    own = checkpoint.find_latest(storage, str(run_name))
    if own is None and not resume_from:
        return None
    path = own[0] if own else resume_from
    try:
        meta = checkpoint.read_meta(path)  # meta.json only, wherever it is stored
    except (FileNotFoundError, OSError, RuntimeError, ValueError, KeyError) as err:
        what = f"--resume-from {resume_from}" if own is None else f"run {run_name!r}'s latest checkpoint {path}"
        raise UserError(f"{what}: not a readable checkpoint ({err})") from None
    differs = checkpoint.mismatches(meta, cfg.to_dict(), num_classes)
    if differs:
        how = (f"run {run_name!r} already has checkpoints; choose another --run-name to start afresh"
               if own else "resume only from a checkpoint of the same model, classes and optimiser")
        raise UserError(f"cannot resume from {path}: {'; '.join(differs)}. {how}")
    return ResumePoint(path, int(meta["epoch"]))


# Ray Train's controller takes a worker's report only when it polls the workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and a worker's next report waits for that
# poll: every epoch shorter than the interval was stretched to it (a 0.2 s epoch of the smoke
# recipe took 2 s). Ray copies the variable from the driver to the controller when a run starts.
CONTROLLER_POLL_S = 0.25
POLL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextmanager
def _controller_poll(seconds: float):
    """RAY_TRAIN_HEALTH_CHECK_INTERVAL_S = `seconds` while a run starts, unless the user set it."""
    if POLL_VAR in os.environ:
        yield
        return
    os.environ[POLL_VAR] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(POLL_VAR, None)


def _fit_interruptibly(trainer, poll=lambda: None):
    """Run `trainer.fit()` off the main thread, calling `poll()` between waits. In the main thread,
    Ray Train installs a SIGINT handler that ends the process with `sys.exit`; here Ctrl-C stays a
    KeyboardInterrupt, so the caller marks the MLflow run KILLED and shuts Ray down (which stops
    the workers)."""
    box: dict = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread below
            box["error"] = err

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        poll()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _training_error(err: TrainingFailedError) -> TrainingError:
    """Ray wraps the worker's exception: a diverged loss becomes the one line a user acts on."""
    cause = _worker_error(err)
    if isinstance(cause, NonFiniteLoss):
        return TrainingDiverged(f"training diverged: {first_line(cause)}; lower optim.lr or warm up with "
                                f"optim.warmup_epochs, then run again (the checkpoints before it are intact)")
    return TrainingError(f"{type(cause).__name__}: {first_line(cause)}" if cause is not err else first_line(err))


def _worker_error(err: TrainingFailedError) -> BaseException:
    """The exception a worker (the lowest failed rank) or the controller raised, out of Ray's
    wrappers: a RayTaskError keeps it as `cause`."""
    failures = getattr(err, "worker_failures", None) or {}
    raised = failures[min(failures)] if failures else getattr(err, "controller_failure", err)
    return getattr(raised, "cause", None) or raised


def _outcome(result, run_name: str, storage: str, resume: ResumePoint | None) -> Outcome:
    best = [(c, m) for c, m in (result.best_checkpoints or []) if m and "val_top1" in m]
    if not best and result.checkpoint is None:
        raise TrainingError("training finished without a checkpoint")
    if best:
        ckpt, metrics = max(best, key=lambda cm: cm[1]["val_top1"])
    else:
        ckpt, metrics = result.checkpoint, (result.metrics or {})
    latest = result.checkpoint or ckpt
    # Ray names a checkpoint by its path on the storage's filesystem (bucket/runs/... on s3://):
    # the outcome names it as every reader here opens it, a local path or a URI.
    best_path, latest_path = checkpoint.uri_of(storage, ckpt.path), checkpoint.uri_of(storage, latest.path)
    last = checkpoint.read_meta(latest_path)
    return Outcome(run_name=run_name, val_top1=float(metrics.get("val_top1", last["metrics"]["val_top1"])),
                   epochs=int(last["epoch"]) + 1, best_checkpoint=best_path, latest_checkpoint=latest_path,
                   storage=storage, resumed_from_epoch=resume.epoch if resume else None,
                   best_epoch=int(metrics.get("epoch", last["epoch"])))
