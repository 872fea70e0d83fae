"""The loop each Ray Train worker runs: build, (resume), then train/evaluate/report per epoch.

Ray only hands this loop its data shards and receives its reports; the epoch functions are
plain PyTorch (epochs.py). Rank 0 alone writes checkpoints' metrics to MLflow.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice

import ray.train
import ray.train.torch
import torch

from alexnet import build_model
from alexnet.config import Config
from alexnet.lr_schedule import Plateau, lr_at, scaled_lr
from alexnet.train import checkpoint
from alexnet.train.device_input import DeviceFeeder
from alexnet.train.epochs import evaluate_epoch, reduce_sums, train_one_epoch
from alexnet.train.progress import Channel
from alexnet.train.val_batches import ValBatches
from pipelines.read.augment import TrainPreset
from pipelines.read.device_augment import augment_on_device
from pipelines.read.loader import StartEpoch

# Batches fetched ahead of the train step (Ray Data default: 1). A step that finishes while the
# next batch is still being formatted waits; a few in hand absorb the jitter of the map tasks.
PREFETCH_BATCHES = 4


@dataclass(frozen=True)
class LoopInputs:
    """Everything a worker's loop needs, built once by the driver (alexnet.train.fit) and pickled to
    every worker (inside TorchTrainer's train_loop_config, as its one key "inputs")."""
    config: Config
    dataset_version: str
    num_classes: int
    pixel_mean: tuple[float, float, float]  # per RGB channel, 0-1 scale
    pixel_std: tuple[float, float, float]
    tracking_uri: str
    run_id: str
    run_name: str
    storage: str  # where a restarted worker group finds checkpoints Ray had not registered
    start: StartEpoch  # rank 0 sets the epoch the stream's tasks augment for
    steps_per_epoch: int  # K: every worker takes K batches of the stream per epoch
    progress: Channel | None = None  # rank 0's steps and notes, to the driver's terminal
    device_preset: TrainPreset | None = None  # data.decode=gpu: the preset this worker applies on its device
    initial_checkpoint: str | None = None  # --resume-from PATH, when Ray hands no checkpoint and the run has none


# Devices with torch's fused (one kernel for all parameters) SGD and AdamW: a faster step
# (benchmarks/optimizer_step.py), and the same state dict, so checkpoints move between the two.
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(params, cfg, lr: float, device_type: str = "cpu"):
    fused = device_type in FUSED_OPTIMIZER_DEVICES
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                               fused=fused)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.optim.weight_decay, fused=fused)


def train_loop(loop_config: dict) -> None:
    """Ray Train's entry point; `loop_config` is {"inputs": LoopInputs}."""
    inputs: LoopInputs = loop_config["inputs"]
    cfg = inputs.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The shards first: asking for them starts Ray Data's split coordinators (new actor processes)
    # while this worker builds its model, not after.
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    torch.manual_seed(cfg.data.seed)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
    else:
        # The CPU reservation only keeps Ray Data schedulable; compute may use the node's cores,
        # shared by the workers on it (the data tasks are light next to AlexNet's FC layers).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))

    net = build_model(cfg.model.arch, inputs.num_classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden)
    channels_last = cfg.run.channels_last and on_gpu
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(net)  # DDP when world > 1
    raw_model = model.module if world > 1 else model  # unwrap once; save and log through this
    if cfg.run.compile:
        model = torch.compile(model)
    amp_dtype = torch.bfloat16 if (cfg.run.amp and on_gpu) else None

    base_lr = scaled_lr(cfg.optim.lr, cfg.optim.batch_size)
    optimizer = make_optimizer(raw_model.parameters(), cfg, base_lr, device.type)
    plateau = Plateau()
    start_epoch = 0
    resumed, own_run = start_checkpoint(ray.train.get_checkpoint(), inputs.storage, inputs.run_name,
                                        inputs.initial_checkpoint)
    if resumed is not None:
        with resumed.as_directory() as d:
            state = checkpoint.load(d, map_location=device)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        plateau = Plateau(**state["plateau"])
        start_epoch = state["epoch"] + 1
        if rank == 0:
            print(f"resuming at epoch {start_epoch} from the checkpoint of epoch {state['epoch']}", flush=True)

    mean = torch.tensor(inputs.pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(inputs.pixel_std, device=device).view(1, 3, 1, 1)
    per_worker = cfg.optim.batch_size // world
    progress = inputs.progress if rank == 0 else None  # to the driver's terminal (alexnet.train.progress)
    # MLflow is imported here, in the worker, not with this module: Ray Train's controller imports
    # this module too (to unpickle train_loop) and needs no MLflow.
    from alexnet.track.tracking import MetricLogger

    logger = MetricLogger(inputs.tracking_uri, inputs.run_id,
                          say=progress.say if progress else None) if rank == 0 else None
    monitor = _system_monitor(cfg, ctx, inputs, resume=resumed is not None)
    # One metric point per epoch in the MLflow run, however often the epoch ran: an attempt that
    # died after logging an epoch but before its checkpoint counted makes the restart re-run it
    # (not logged again), and an epoch of this run checkpointed but never logged (its metrics were
    # held through an outage when the driver died) is logged from its checkpoint. A checkpoint of
    # another run (--resume-from) brings no metrics: this run did not measure them.
    logged = logger.logged_steps(EPOCH_POINT) if logger is not None else set()
    if (logger is not None and resumed is not None and own_run and state["epoch"] not in logged
            and state.get("metrics")):
        logger.log(from_report(state["metrics"]), step=state["epoch"])
    stream = None
    try:
        device_preset = inputs.device_preset  # data.decode=gpu: augment here, on the device
        val_batches = ValBatches(val_shard, batch_size=per_worker, device=device)
        steps = inputs.steps_per_epoch
        if rank == 0:
            inputs.start.set(start_epoch)  # the stream's tasks read it: augmentation follows the epoch
        if world > 1:
            torch.distributed.barrier()  # nobody starts the stream before the start epoch is set
        # One stream for the whole run (pipelines.read.loader): its next K batches are the epoch's.
        stream = run_stream(train_shard, device_preset, device, batch_size=per_worker,
                            shuffle_buffer=cfg.data.shuffle_buffer or None,
                            shuffle_seed=cfg.data.seed * 100003 + start_epoch * 1009 + rank)
        for epoch in range(start_epoch, cfg.optim.epochs):
            set_lr = _lr_setter(optimizer, epoch, steps, base=base_lr, schedule=cfg.optim.schedule,
                                epochs=cfg.optim.epochs, warmup_epochs=cfg.optim.warmup_epochs,
                                plateau_scale=plateau.scale, step_size=cfg.optim.step_size)
            set_lr(0)
            before_step = _each_step(set_lr if epoch < cfg.optim.warmup_epochs else None,
                                     progress.steps(epoch) if progress else None)
            epoch_start = time.perf_counter()
            tr = reduce_sums(
                train_one_epoch(model, optimizer, islice(stream, steps), device, mean=mean, std=std, epoch=epoch,
                                label_smoothing=cfg.optim.label_smoothing, amp_dtype=amp_dtype,
                                channels_last=channels_last, before_step=before_step),
                device,
            )
            if tr["images"] < steps * per_worker * world:  # never report an epoch the stream cut short
                raise RuntimeError(f"epoch {epoch + 1}: the training stream gave {int(tr['images'])} of "
                                   f"{steps * per_worker * world} images (it was planned for fewer epochs)")
            lr = optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step
            va = reduce_sums(evaluate_epoch(model, val_batches.epoch(), device, mean=mean, std=std, amp_dtype=amp_dtype,
                                      channels_last=channels_last), device)
            metrics = epoch_metrics(epoch, lr, tr, va, wall_s=time.perf_counter() - epoch_start, world=world)
            if cfg.optim.schedule == "plateau":
                plateau.update(metrics["val/top1"])
            report = {_report_key(k): v for k, v in metrics.items()}
            if rank == 0:
                if epoch not in logged:
                    logger.log({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint.save(tmp, model=raw_model, optimizer=optimizer, plateau=plateau.state_dict(),
                                    epoch=epoch, config=cfg.to_dict(),
                                    dataset_version=inputs.dataset_version, metrics=report,
                                    num_classes=inputs.num_classes)
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)
        if logger is not None and logger.pending:
            logger.log({}, step=cfg.optim.epochs - 1)  # last chance to back-fill after an outage
    finally:
        if isinstance(stream, DeviceFeeder):
            stream.close()
        if monitor is not None:
            monitor.finish()


def _lr_setter(optimizer, epoch: int, steps: int, **schedule):
    """step -> sets and returns the rate of that step of `epoch` (of `steps`)."""
    def set_lr(step: int) -> float:
        lr = lr_at(epoch, fraction=min(step, max(0, steps - 1)) / max(1, steps), **schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
    return set_lr


def _each_step(*hooks):
    """One before-step hook that calls each given one, or None when none is given."""
    hooks = [hook for hook in hooks if hook is not None]
    if not hooks:
        return None

    def before_step(step: int) -> None:
        for hook in hooks:
            hook(step)
    return before_step


# The epoch's MLflow metrics (epoch_metrics' keys but "epoch"); Ray Train's report and the
# checkpoint name them with "_" for "/".
METRIC_NAMES = ("train/loss", "val/loss", "val/top1", "val/top5", "lr", "throughput/images_per_s",
                "throughput/data_wait_fraction", "time/epoch_s")
EPOCH_POINT = "val/top1"  # an epoch is in the MLflow run iff this metric has a point at its step


def _report_key(name: str) -> str:
    return name.replace("/", "_")


def from_report(report: dict) -> dict:
    """A report's (or a checkpoint's) metrics under their MLflow names."""
    return {name: report[_report_key(name)] for name in METRIC_NAMES if _report_key(name) in report}


def epoch_metrics(epoch: int, lr: float, tr: dict, va: dict, *, wall_s: float, world: int) -> dict:
    """One epoch's reported metrics from the train and val sums over all workers (`reduce_sums`).
    Images/s is global: all workers' images over the mean worker's train time."""
    val_n = max(1.0, va["images"])
    return {
        "epoch": epoch,
        "train/loss": tr["loss_sum"] / max(1.0, tr["images"]),
        "val/loss": va["loss_sum"] / val_n,
        "val/top1": va["top1"] / val_n,
        "val/top5": va["top5"] / val_n,
        "lr": lr,
        "throughput/images_per_s": tr["images"] / max(1e-9, tr["seconds"] / world),
        "throughput/data_wait_fraction": tr["data_wait_s"] / max(1e-9, tr["seconds"]),
        "time/epoch_s": wall_s,
    }


def run_stream(shard, device_preset, device, **batching) -> Iterator[dict]:
    """The run's one iterator over this worker's batches; each epoch takes its K batches from it.
    An iterator, not Ray Data's iterable: every iter() over `iter_torch_batches` starts a new
    execution at the stream's beginning, so each epoch would replay the first one (the same crops,
    flips and lighting in the same order) and pay Ray Data's start-up again."""
    return iter(_device_input(_host_batches(shard, device_preset is not None, device, **batching), device_preset, device))


def _host_batches(shard, decode_on_device: bool, device, *, batch_size: int, shuffle_buffer: int | None, shuffle_seed: int):
    """This worker's batches from its Ray Data shard (an iterable: see run_stream): uint8 image / int64 label tensors,
    or, when `decode_on_device` (data.decode=gpu), Arrow tables of rows still encoded, with their augmentation plans."""
    if not decode_on_device:
        return shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=shuffle_buffer,
            local_shuffle_seed=shuffle_seed, dtypes={"image": torch.uint8, "label": torch.long}, device="cpu",
            pin_memory=device.type == "cuda", prefetch_batches=PREFETCH_BATCHES)
    return shard.iter_batches(batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=shuffle_buffer,
                              local_shuffle_seed=shuffle_seed, batch_format="pyarrow", prefetch_batches=PREFETCH_BATCHES)


def _device_input(host, device_preset, device):
    """With a `device_preset` the encoded rows are decoded and augmented on the device by a
    DeviceFeeder: batch k+1 is made in its thread (on a side CUDA stream) while the model trains
    on batch k, so only what the feeder has not finished in time counts as data wait."""
    if device_preset is None:
        return host
    return DeviceFeeder(host, partial(augment_on_device, preset=device_preset, device=device), device)


def _system_monitor(cfg, ctx, inputs: LoopInputs, *, resume: bool):
    """One system-metrics sampler per node (on its local rank 0) when run.system_metrics is on;
    metric names carry the node only when the run spans several nodes."""
    if not cfg.run.system_metrics or ctx.get_local_rank() != 0:
        return None
    from alexnet.track.tracking import start_system_metrics  # see train_loop

    multi_node = ctx.get_local_world_size() < ctx.get_world_size()
    return start_system_metrics(inputs.tracking_uri, inputs.run_id,
                                interval_s=cfg.run.system_metrics_interval,
                                node_id=f"node{ctx.get_node_rank()}" if multi_node else None, resume=resume,
                                say=inputs.progress.say if inputs.progress else None)


def start_checkpoint(registered, storage: str, run_name: str, initial: str | None):
    """The checkpoint a worker group starts from: the later of `registered` (the one Ray hands, the
    latest it registered) and run `run_name`'s latest complete one on `storage`, else `initial`
    (`--resume-from PATH`), else none. Ray registers a checkpoint only after its upload, so a worker or a driver killed in
    between leaves Ray's behind the storage's; the driver planned the run's stream from the
    storage's (alexnet.train.fit.resume_point), and a group that started earlier would run out of
    stream before its last epoch. Returns (checkpoint or None, whether it is this run's own)."""
    own = checkpoint.find_latest(storage, run_name)
    if registered is not None and (own is None or _folder_name(registered.path) == _folder_name(own[0])):
        return registered, True
    path = own[0] if own else initial
    if not path:
        return None, True
    found = ray.train.Checkpoint.from_directory(path) if os.path.isdir(path) else ray.train.Checkpoint(path)
    return found, bool(own)


def _folder_name(path: str) -> str:
    """A checkpoint's folder name (checkpoint_<time>), from a path or a URI: Ray's checkpoint is one
    of the run's complete ones, so it is the latest exactly when its folder is find_latest's."""
    return path.rstrip("/").rsplit("/", 1)[-1]
