"""Issue 15, target 1, on one GPU: AlexNet through the whole path (Parquet -> Ray Data ->
TorchTrainer), against the same model on tensors already in GPU memory, in one run of < 8 minutes
from a cold machine. Every section lands in OUT/gpu_bench.json as soon as it is done.

    python benchmarks/gpu/gpu_bench.py --out DIR [--images 101500] [--epochs 2] [--budget-s 450]
    python benchmarks/gpu/gpu_bench.py --out DIR --dry-run   # the same code, tiny sizes, CPU device

Sections, in order (a section the remaining --budget-s cannot hold is recorded as skipped):
1. data: --images JPEGs (shorter side 256 px, longer 256-384) generated with every core and
   ingested with pipelines.ingest (--resize 256; 1% val): >= 100,000 training images an epoch.
2. check: the device path's pixels (pipelines.read.device_augment on the GPU) against the CPU path's
   (TrainPreset on the host) for the same rows and plans. decode_only: the batched decode call
   alone on 256 stored JPEGs (the decoder's ceiling, and its host CPU per image).
3. device_input: Ray Data (data.decode=gpu: rows + plans) -> Arrow batches ->
   alexnet.train.device_input.DeviceFeeder(augment_on_device) alone, one epoch: images/s, and the
   feeder thread's CPU per image (on the real machine: nvJPEG's host work and
   the kernel launches included).
4. compute_only (eager): the model alone, bf16 autocast, channels_last, SGD, batch 256.
5. feeder_train: sections 3 and 4 in one process (no Ray Train): the data path the train worker
   gets once it pulls its batches through DeviceFeeder.
6. fit runs (alexnet.train.fit.fit: what `alexnet train` runs), the torchvision recipe at 224 px
   on one worker: data.decode=gpu (2 epochs), then cpu (1 epoch: input-bound at a few thousand
   images/s, its one epoch of >= 100,000 images is steady state); then the CPU path alone
   (no model, one consumer, as the worker takes it) with Ray Data limited to 2, 4, 8 and 15 CPUs:
   the scaling curve, and ds.stats() at 15 (issue 22, target 2); then compute_only and the
   data.decode=gpu run with run.compile=true; last the cpu-decode compile run (input-bound:
   compile cannot change its images/s, so it goes if time is left). Images/s and data wait are
   the worker's own metrics for the last epoch (epoch 0 warms up: compile, cudnn autotuning).
MFU = images/s x 4.3 GFLOP (torchvision AlexNet at 224 px, forward + backward) / --peak-tflops
(989: H100/H200 SXM dense bf16, the datasheet figure).

On the device machine (Python 3.12, its own torch and torchvision; Ray and MLflow carried in a
bundle built here by ../shared/tools/device-bundle.sh, which pins ray==2.60.0 and
mlflow-skinny==3.17.2, as pyproject.toml's ray>=2.60,<2.61 and mlflow>=3.13,<4), the `run` tool's
call, with carry [".devbundle"] and timeout_s 600 (build the bundle first, in the repo root here:
`../shared/tools/device-bundle.sh`; 43 MB):

    mkdir -p /tmp/site && tar -C /tmp/site -xJf .devbundle/site.tar.xz && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && (timeout 60 python3 -m pytest -q -p no:cacheprovider tests/read/test_device_augment.py tests/train/test_device_input.py -k cuda 2>&1 | tail -15 > $OUT/cuda_tests.txt; timeout 500 python3 benchmarks/gpu/gpu_bench.py --out $OUT --budget-s 450 2>&1 | tee $OUT/log.txt; cat $OUT/cuda_tests.txt)

(the CUDA tests first, 60 s at most: the device path's pixels against the CPU path's, the feeder's
streams; then this script, 450 s of sections.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared dataset helper

GFLOP_PER_IMAGE = 4.3  # training step of torchvision's AlexNet at 224 px: 3 x 0.71 GMAC x 2 FLOP/MAC


@dataclass(frozen=True)
class Sizes:
    images: int  # generated and ingested, train + val
    val_fraction: float
    shorter: int  # px, stored shorter side
    crop: int  # px
    resize: int  # px
    hidden: int  # fully connected units
    batch: int  # images per step (one worker)
    epochs: int
    compute_steps: int  # timed steps of the compute-only loop
    warmup_steps: int
    check_rows: int
    scaling_timed_s: float  # timed seconds of each point of the CPU path's scaling curve


REAL = Sizes(images=101_500, val_fraction=0.01, shorter=256, crop=224, resize=256, hidden=4096, batch=256, epochs=2,
             compute_steps=100, warmup_steps=15, check_rows=256, scaling_timed_s=10)
DRY = Sizes(images=96, val_fraction=0.25, shorter=72, crop=64, resize=72, hidden=256, batch=8, epochs=2,
            compute_steps=3, warmup_steps=1, check_rows=16, scaling_timed_s=1)


class Bench:
    """The run's clock, budget and JSON (rewritten after every section)."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.result: dict = {"sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn, *, estimate_s: float = 0.0):
        """Run fn() -> dict unless the budget cannot hold estimate_s more; record it either way.
        A failing section is recorded with its error and the run goes on (device time is scarce)."""
        if self.elapsed() + estimate_s > self.budget_s:
            self.record(name, {"skipped": f"budget: {self.elapsed():.0f} s used, ~{estimate_s:.0f} s needed, "
                                          f"{self.budget_s:.0f} s allowed"})
            return None
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as err:  # recorded; the remaining sections still run
            traceback.print_exc()
            value = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        value = dict(value or {})
        value["section_s"] = round(time.perf_counter() - t, 1)
        self.record(name, value)
        return value

    def record(self, name: str, value: dict) -> None:
        self.result["sections"][name] = value
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out / "gpu_bench.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        tmp.replace(self.out / "gpu_bench.json")
        print(f"[{self.elapsed():6.0f} s] {name}: {json.dumps(value, default=str)[:600]}", flush=True)


def machine(device) -> dict:
    import platform

    import ray
    import torch
    import torchvision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ray": ray.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    return info


def recipe(data: str, sizes: Sizes, *, decode: str, compile_: bool, epochs: int | None = None):
    """torchvision's recipe (RandomResizedCrop + flip, SGD) on one worker, at these sizes."""
    from alexnet.config import load_config

    return load_config("torchvision", [
        f"data.path={data}", f"data.decode={decode}", f"data.crop={sizes.crop}", f"data.resize={sizes.resize}",
        f"model.hidden={sizes.hidden}", "run.num_workers=1", f"optim.batch_size={sizes.batch}",
        f"optim.epochs={epochs or sizes.epochs}", f"run.compile={str(compile_).lower()}", "run.keep_checkpoints=1"])


def device_preset(info, cfg):
    from pipelines.read.loader import train_preset

    return train_preset(info, **cfg.data.augmentation)


def check(info, cfg, device, rows: int) -> dict:
    """Device path vs CPU path on the same stored rows and plans (one row group of a shard)."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.read.device_augment import augment_on_device, plan_batch
    from pipelines.read.loader import COLUMNS

    table = pq.ParquetFile(info.shard_paths("train")[0]).read_row_group(0, columns=COLUMNS).slice(0, rows)
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
    preset = device_preset(info, cfg)
    on_host = preset(batch, seed=1, epoch=0)["image"].astype(int)
    planned = plan_batch(batch, preset=preset, seed=1)
    on_device = augment_on_device(planned, preset, device)["image"].cpu().numpy().astype(int)
    diff = np.abs(on_device - on_host)
    own = diff.reshape(len(diff), -1).mean(axis=1)
    mirrored = np.abs(on_device - on_host[..., ::-1]).reshape(len(diff), -1).mean(axis=1)
    return {"images": len(diff), "mean_abs_diff": float(diff.mean()), "p99_abs_diff": float(np.percentile(diff, 99)),
            "max_abs_diff": int(diff.max()), "share_of_values_equal": float((diff == 0).mean()),
            "images_closer_to_own_than_mirrored_2x": float((own * 2 < mirrored).mean())}


def decode_only(info, device, rows: int) -> dict:
    """The batched decode call alone (torchvision's nvJPEG binding on CUDA) on one batch of stored
    JPEGs: its images/s is the decoder's ceiling for the device path; its host CPU per image
    (thread time, the call synchronises) is part of target 3's input-thread budget."""
    import pyarrow.parquet as pq
    import torch
    import torchvision.io as tvio

    column = pq.ParquetFile(info.shard_paths("train")[0]).read_row_group(0, columns=["image"]).column("image")
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in column.to_pylist()[:rows]]
    runs = []
    for _ in range(6):
        _sync(device)
        wall, cpu = time.perf_counter(), time.thread_time()
        tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device)
        _sync(device)
        runs.append((time.perf_counter() - wall, time.thread_time() - cpu))
    wall, cpu = sorted(runs[1:])[len(runs[1:]) // 2]  # the median of the warm calls
    return {"images": len(data), "images_per_s": len(data) / wall, "host_cpu_us_per_image": 1e6 * cpu / len(data)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _feeder(info, cfg, device, batch: int):
    from alexnet.train.device_input import DeviceFeeder
    from pipelines.read.device_augment import augment_on_device
    from pipelines.read.loader import train_dataset

    preset = device_preset(info, cfg)
    ds = train_dataset(info, preset, seed=cfg.data.seed, decode_on_device=True)
    host = ds.iter_batches(batch_size=batch, batch_format="pyarrow", prefetch_batches=4, drop_last=True)
    return DeviceFeeder(host, partial(augment_on_device, preset=preset, device=device), device)


def _stats(feeder) -> dict:
    s = feeder.stats
    per = max(1, s.images)
    return {"feeder_thread_cpu_us_per_image": 1e6 * (s.source_cpu_s + s.transform_cpu_s) / per,
            "feeder_transform_cpu_us_per_image": 1e6 * s.transform_cpu_s / per,
            "feeder_source_cpu_us_per_image": 1e6 * s.source_cpu_s / per,
            "feeder_transform_wall_us_per_image": 1e6 * s.transform_wall_s / per}


def _steady(marks: list[tuple[float, int]]) -> float:
    """Images/s between the 10%-th batch and the last (start-up left out)."""
    if len(marks) < 3:
        return 0.0
    first = marks[max(1, len(marks) // 10)]
    last = marks[-1]
    return (last[1] - first[1]) / max(1e-9, last[0] - first[0])


def device_input(info, cfg, device, batch: int) -> dict:
    """The device input path alone over one epoch (no model): can it feed the target rate?"""
    start = time.perf_counter()
    marks, images = [], 0
    with _feeder(info, cfg, device, batch) as feeder:
        for b in feeder:
            images += int(b["label"].shape[0])
            _sync(device)  # each batch complete before it counts
            marks.append((time.perf_counter(), images))
        stats = _stats(feeder)
    wall = time.perf_counter() - start
    return {"images": images, "wall_s": wall, "images_per_s_with_startup": images / wall,
            "images_per_s_steady": _steady(marks), **stats}


def cpu_scaling(info, cfg, cpu_counts: list[int], timed_s: float, batch: int) -> dict:
    """The data.decode=cpu input path alone (pipelines.read.loader.train_dataset -> one consumer's
    iter_torch_batches, uint8, as the train worker takes it; no model), with Ray Data limited to
    each of `cpu_counts` CPUs (its executor's resource_limits): images/s over `timed_s` seconds
    after 2 s of warm-up, per CPU, and Ray Data's own stats (ds.stats()) for the largest count."""
    import torch
    from ray.data import DataContext, ExecutionResources

    from pipelines.read.loader import train_dataset, train_preset

    preset = train_preset(info, **cfg.data.augmentation)
    ctx = DataContext.get_current()
    before = ctx.execution_options.resource_limits
    curve, stats = [], ""
    try:
        for cpus in cpu_counts:
            ctx.execution_options.resource_limits = ExecutionResources.for_limits(cpu=cpus)
            ds = train_dataset(info, preset, seed=0, epochs=1)
            start = time.perf_counter()
            timed_from, images, timed = None, 0, 0
            for b in ds.iter_torch_batches(batch_size=batch, dtypes={"image": torch.uint8, "label": torch.long}):
                n = int(b["label"].shape[0])
                now = time.perf_counter()
                if timed_from is None and now - start >= 2.0:
                    timed_from = now
                elif timed_from is not None:
                    timed += n
                    if now - timed_from >= timed_s:
                        break
                images += n
            rate = timed / max(1e-9, time.perf_counter() - timed_from) if timed_from else 0.0
            curve.append({"cpus": cpus, "images_per_s": round(rate, 1), "per_cpu": round(rate / cpus, 1),
                          "timed_images": timed})
            print(f"  cpu path, {cpus} Ray Data CPUs: {rate:,.0f} images/s ({rate / cpus:,.0f} per CPU)", flush=True)
            if cpus == max(cpu_counts):
                stats = ds.stats()
    finally:
        ctx.execution_options.resource_limits = before
    return {"curve": curve, "ray_data_stats": stats[-6000:]}


class Step:
    """One training step as the worker takes it (normalise on the device, channels_last, bf16
    autocast, cross entropy, SGD with momentum), on the recipe's model."""

    def __init__(self, cfg, num_classes: int, device, compile_: bool):
        import torch

        from alexnet import build_model

        self.device = device
        self.cuda = device.type == "cuda"
        model = build_model(cfg.model.arch, num_classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden).to(device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=cfg.optim.momentum,
                                   weight_decay=cfg.optim.weight_decay)
        self.model = torch.compile(model) if compile_ else model
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def __call__(self, images, labels) -> None:
        import torch
        import torch.nn.functional as F

        x = images.float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = F.cross_entropy(self.model(x), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def compute_only(cfg, num_classes: int, device, sizes: Sizes, compile_: bool, peak_tflops: float) -> dict:
    import torch

    step = Step(cfg, num_classes, device, compile_)
    images = torch.randint(0, 256, (sizes.batch, 3, sizes.crop, sizes.crop), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (sizes.batch,), device=device)
    t = time.perf_counter()
    for _ in range(sizes.warmup_steps):
        step(images, labels)
    _sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(sizes.compute_steps):
        step(images, labels)
    _sync(device)
    ips = sizes.compute_steps * sizes.batch / (time.perf_counter() - t)
    return {"images_per_s": ips, "warmup_s": warm, **_mfu(ips, sizes, device, peak_tflops)}


def feeder_train(info, cfg, num_classes: int, device, sizes: Sizes, peak_tflops: float) -> dict:
    """DeviceFeeder feeding the compute-only step, one epoch, in this process. Timed from the
    `warm`-th batch on (Ray Data's start-up and cudnn's autotuning before it)."""
    step = Step(cfg, num_classes, device, compile_=False)
    warm = 5 if device.type == "cuda" else 1
    images = steps = 0
    wait = warm_images = 0.0
    start = time.perf_counter()
    with _feeder(info, cfg, device, sizes.batch) as feeder:
        fetch = time.perf_counter()
        for b in feeder:
            if steps == warm:
                _sync(device)
                fetch = warm_at = time.perf_counter()
                warm_images, wait = images, 0.0
            wait += time.perf_counter() - fetch
            step(b["image"], b["label"])
            steps += 1
            images += int(b["label"].shape[0])
            fetch = time.perf_counter()
        _sync(device)
        stats = _stats(feeder)
    end = time.perf_counter()
    if steps <= warm:
        return {"error": f"only {steps} batches: nothing timed after the {warm} warm-up batches"}
    ips = (images - warm_images) / (end - warm_at)
    return {"images": images, "wall_s": end - start, "timed_s": end - warm_at, "images_per_s_steady": ips,
            "data_wait_fraction": wait / (end - warm_at), **stats, **_mfu(ips, sizes, device, peak_tflops)}


def _mfu(ips: float, sizes: Sizes, device, peak_tflops: float) -> dict:
    if device.type != "cuda" or sizes.crop != 224:
        return {}
    return {"mfu": ips * GFLOP_PER_IMAGE * 1e9 / (peak_tflops * 1e12)}


METRICS = ("throughput/images_per_s", "throughput/data_wait_fraction", "time/epoch_s", "val/top1")


def pipeline(bench: Bench, name: str, cfg, work: Path, sizes: Sizes, device, peak_tflops: float) -> dict:
    """One `alexnet.train.fit.fit` run (TorchTrainer, 1 worker); its per-epoch metrics from MLflow."""
    from mlflow.tracking import MlflowClient

    from alexnet.train.fit import check_inputs, fit

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gpu-bench")
    exp_id = exp.experiment_id if exp else client.create_experiment("gpu-bench")
    run_id = client.create_run(exp_id, run_name=name).info.run_id
    t = time.perf_counter()
    info = check_inputs(cfg)
    outcome = fit(cfg, info, device_preset(info, cfg), run_name=f"{name}-{int(time.time())}",
                  storage=str(work / "runs"), tracking_uri=uri, run_id=run_id)
    wall = time.perf_counter() - t
    client.set_terminated(run_id)
    history = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
               for k in METRICS}
    ips = (history["throughput/images_per_s"] or [0.0])[-1]
    out = {"images_per_s": ips, "data_wait_fraction": (history["throughput/data_wait_fraction"] or [None])[-1],
           "per_epoch": history, "fit_wall_s": wall, "val_top1": outcome.val_top1,
           "device_decode": cfg.data.decode == "gpu" and device.type == "cuda",
           **_mfu(ips, sizes, device, peak_tflops)}
    base = bench.result["sections"].get(f"compute_only_{'compile' if cfg.run.compile else 'eager'}", {})
    if base.get("images_per_s"):
        out["ratio_to_compute_only"] = ips / base["images_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_bench.json")
    ap.add_argument("--dry-run", action="store_true", help="the same sections at tiny sizes on the CPU")
    ap.add_argument("--images", type=int, help="generated images, train + val (default 104000; dry run 96)")
    ap.add_argument("--epochs", type=int, help="epochs per fit run (default 2: a warm-up epoch, then the measured one)")
    ap.add_argument("--work", default="/tmp/gpu-bench", help="dataset, MLflow store and checkpoints (reused)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would end past this")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM: 989)")
    args = ap.parse_args()
    sizes = DRY if args.dry_run else REAL
    sizes = Sizes(**{**asdict(sizes), **({"images": args.images} if args.images else {}),
                     **({"epochs": args.epochs} if args.epochs else {})})
    work = Path(args.work) / ("dry" if args.dry_run else "real")
    bench = Bench(Path(args.out), args.budget_s if not args.dry_run else 1e9)
    bench.result.update(sizes=asdict(sizes), peak_tflops_bf16=args.peak_tflops, gflop_per_image=GFLOP_PER_IMAGE,
                        dry_run=args.dry_run)

    import ray
    import ray.data
    import torch
    from synthetic_dataset import ingested

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a machine without a GPU")
    device = torch.device("cuda" if not args.dry_run else "cpu")
    ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count() if not args.dry_run else 0,
             include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    data = bench.section("data", lambda: ingested(work, sizes.images, val_fraction=sizes.val_fraction,
                                                   shorter=sizes.shorter))
    bench.result["machine"] = machine(device)
    if not data or "path" not in data:
        raise SystemExit("no dataset: see the data section")
    from pipelines.dataset import open_dataset

    info = open_dataset(data["path"])
    bench.record("data", {**data, "train_images": info.split_size("train"), "val_images": info.split_size("val")})
    classes = info.num_classes
    eager = recipe(data["path"], sizes, decode="gpu", compile_=False)
    peak = args.peak_tflops
    train_images = info.split_size("train")
    fit_estimate = 40 + sizes.epochs * train_images / 15_000
    bench.section("check", lambda: check(info, eager, device, sizes.check_rows), estimate_s=10)
    bench.section("decode_only", lambda: decode_only(info, device, sizes.batch), estimate_s=5)
    bench.section("device_input", lambda: device_input(info, eager, device, sizes.batch), estimate_s=15)
    bench.section("compute_only_eager", lambda: compute_only(eager, classes, device, sizes, False, peak), estimate_s=10)
    bench.section("feeder_train", lambda: feeder_train(info, eager, classes, device, sizes, peak), estimate_s=15)
    bench.section("fit_decode_on_device_eager", lambda: pipeline(bench, "decode-on-device-eager", eager, work, sizes, device, peak),
                  estimate_s=fit_estimate)
    # Input-bound at a few thousand images/s: one epoch of >= 100,000 images is its steady state.
    bench.section("fit_cpu_decode_eager", lambda: pipeline(bench, "cpu-decode-eager", recipe(
        data["path"], sizes, decode="cpu", compile_=False, epochs=1), work, sizes, device, peak),
                  estimate_s=40 + train_images / 2_500)
    scaling = [n for n in (2, 4, 8, 15) if n < (os.cpu_count() or 1)] or [1]
    bench.section("cpu_path_scaling", lambda: cpu_scaling(info, recipe(data["path"], sizes, decode="cpu", compile_=False),
                                                          scaling, sizes.scaling_timed_s, sizes.batch),
                  estimate_s=len(scaling) * (sizes.scaling_timed_s + 8))
    bench.section("compute_only_compile", lambda: compute_only(eager, classes, device, sizes, True, peak),
                  estimate_s=60)
    bench.section("fit_decode_on_device_compile", lambda: pipeline(bench, "decode-on-device-compile", recipe(
        data["path"], sizes, decode="gpu", compile_=True), work, sizes, device, peak), estimate_s=fit_estimate + 60)
    bench.section("fit_cpu_decode_compile", lambda: pipeline(bench, "cpu-decode-compile", recipe(
        data["path"], sizes, decode="cpu", compile_=True), work, sizes, device, peak),
                  estimate_s=100 + sizes.epochs * train_images / 2_500)
    ray.shutdown()
    print(f"done in {bench.elapsed():.0f} s: {bench.out / 'gpu_bench.json'}", flush=True)


if __name__ == "__main__":
    main()
