"""Issue 15, target 3: what `data.decode: gpu` costs the host, measured on a machine without a GPU.

    .venv/bin/python benchmarks/gpu_host_cost.py [--images 24500] [--out benchmarks/results/gpu_host_cost.json]

Budget (to feed 25,000 images/s from 16 cores): <= 0.5 ms of Ray Data CPU per image, and
<= 25 us per image in the train worker's input thread.

(a) Ray Data side. Generated 256 px JPEGs (benchmarks/synthetic_dataset.py) ingested with
    pipelines.ingest; `pipelines.read.loader.train_dataset(..., decode_on_device=True)` with the
    torchvision recipe (RandomResizedCrop 224, flip) on a local Ray with every core, consumed here
    as the train worker does (`iter_batches(batch_size=256, batch_format="pyarrow")`). One epoch
    warms up (worker start, imports); over the next, timed one, the CPU time (user + system, psutil)
    of every process: Ray's workers (the map tasks: read a row group slice, draw the plans, ship
    Arrow blocks), Ray's daemons (raylet, GCS, ...) and this process (the batch iterator, which
    runs in the train worker's process in a real run). Each epoch is one Ray Data execution, its
    start-up included.
(b) The train worker's input thread: alexnet.train.device_input.DeviceFeeder running
    pipelines.read.device_augment.augment_on_device over Arrow batches of the same pipeline (copied
    into this process), timed by the thread's own CPU clock (`time.thread_time`). The device work
    is stubbed, since on a GPU it runs on the device: the feeder runs on the "meta" device, where
    nothing is decoded (each image's output is allocated at its stored size) and torch ops only
    compute shapes. Two parts of it whose meta kernels are Python decompositions (torch._refs,
    ~50x a real op's host cost) are taken out: the resample is replaced by its output's
    allocation, and the concatenation of the decoded images is timed alone and subtracted. Both
    are accounted for instead as (their device ops per batch, counted by a dispatch mode on the
    CPU device) x (the host cost of one small torch op here, measured). Not measurable without a
    GPU, and measured by benchmarks/gpu/gpu_bench.py (device_input: the feeder thread's CPU per
    image there): the CUDA launch of each op and nvJPEG's host work per image.

The machine is shared: each part waits (up to --max-wait-s) for the 1-minute load average to fall
to --quiet-load, and the JSON records the load before and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from collections import Counter
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 256
# Ops that launch no kernel on a CUDA device (views, metadata, allocation).
NO_KERNEL = {"view", "reshape", "unsqueeze", "select", "slice", "permute", "transpose", "expand", "unfold",
             "as_strided", "split_with_sizes", "split", "narrow", "detach", "alias", "t", "empty", "empty_strided",
             "lift_fresh", "_unsafe_view", "resize_", "result_type"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def wait_quiet(limit: float, max_wait_s: float) -> dict:
    """Sleep until the 1-minute load average is <= limit, at most max_wait_s."""
    start = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - start < max_wait_s:
        time.sleep(30)
    load = os.getloadavg()[0]
    return {"load_before": round(load, 2), "waited_s": round(time.monotonic() - start), "quiet": load <= limit}


def _processes() -> dict:
    """pid -> (kind, cpu seconds) for this process and every process under it (Ray's)."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            name = proc.name()
        except psutil.Error:
            continue
        kind = "consumer" if proc.pid == me.pid else "workers" if name.startswith("ray::") else "daemons"
        out[(proc.pid, proc.create_time())] = (kind, times.user + times.system)
    return out


def ray_data_side(ds, epochs: int = 1) -> dict:
    """CPU seconds per kind of process over `epochs` full passes of `ds` (after one warm-up)."""

    def epoch() -> int:
        return sum(b.num_rows for b in ds.iter_batches(batch_size=BATCH, batch_format="pyarrow", prefetch_batches=4))

    epoch()  # warm-up: workers started, torch and pyarrow imported, caches filled
    before = _processes()
    start = time.perf_counter()
    images = sum(epoch() for _ in range(epochs))
    wall = time.perf_counter() - start
    after = _processes()
    cpu = {"consumer": 0.0, "workers": 0.0, "daemons": 0.0}
    for key, (kind, seconds) in after.items():
        cpu[kind] += seconds - before.get(key, (kind, 0.0))[1]  # processes started meanwhile count in full
    total = sum(cpu.values())
    return {"images": images, "wall_s": round(wall, 2), "images_per_s": round(images / wall, 1),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_ms_per_image": round(1e3 * total / images, 4),
            "cpu_ms_per_image_by_kind": {k: round(1e3 * v / images, 4) for k, v in cpu.items()},
            "budget_ms_per_image": 0.5}


def plan_cost(info, preset) -> dict:
    """plan_batch alone on a stored batch (numpy, as the map tasks call it): us per image."""
    import pyarrow.parquet as pq

    from pipelines.read.device_augment import plan_batch
    from pipelines.read.loader import COLUMNS

    table = pq.ParquetFile(info.shard_paths("train")[0]).read_row_group(0, columns=COLUMNS).slice(0, 128)
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
    runs = []
    for _ in range(20):
        t = time.thread_time()
        plan_batch(batch, preset=preset, seed=0, epoch=1)
        runs.append(time.thread_time() - t)
    return {"plan_batch_us_per_image": round(1e6 * statistics.median(runs) / len(table), 2)}


def _owned(table):
    """A copy of an Arrow table in this process's memory (Ray's batches may view its object
    store): the input thread's batches as a train worker holds them, its own."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def _feed(batches: list, preset, device: str):
    """DeviceFeeder over the batches -> its FeederStats."""
    from alexnet.train.device_input import DeviceFeeder
    from pipelines.read.device_augment import augment_on_device

    with DeviceFeeder(iter(batches), partial(augment_on_device, preset=preset, device=device), device) as feeder:
        for _ in feeder:
            pass
        return feeder.stats


def op_dispatch_us() -> dict:
    """Host cost of one small torch op from Python here (call + dispatch + a trivial kernel)."""
    import torch

    a, b = torch.ones(8, dtype=torch.float64), torch.full((8,), 2.0, dtype=torch.float64)
    ops = {"add_": lambda: a.add_(1.0), "minimum": lambda: torch.minimum(a, b), "clamp_": lambda: a.clamp_(min=0.0),
           "to": lambda: a.to(torch.float32), "mul": lambda: a * b}
    out = {}
    for name, op in ops.items():
        runs = []
        for _ in range(7):
            t = time.thread_time()
            for _ in range(2000):
                op()
            runs.append((time.thread_time() - t) / 2000)
        out[name] = round(1e6 * statistics.median(runs), 3)
    out["median_us"] = statistics.median(list(out.values()))
    return out


def _resample_ops(batch, preset) -> Counter:
    """The device ops (kernel launches on CUDA) one batch's resample issues, by name: counted by a
    dispatch mode around `_resample` on the CPU device (real shapes; one batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pipelines.read import device_augment

    counts: Counter = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in NO_KERNEL:
                counts[name] += 1
            return func(*args, **(kwargs or {}))

    real = device_augment._resample

    def counted(*args, **kwargs):
        with Count():
            return real(*args, **kwargs)

    device_augment._resample = counted
    try:
        device_augment.augment_on_device(batch, preset, "cpu")
    finally:
        device_augment._resample = real
    return counts


def input_thread(batches: list, preset) -> dict:
    """The feeder thread's CPU on the meta device (see the module docstring, (b))."""
    import torch

    from pipelines.read import device_augment

    images = sum(b.num_rows for b in batches)
    ops = _resample_ops(batches[0], preset)
    real = device_augment._resample

    def allocated(flat, image, axis, host_axes, preset):
        return torch.empty((image.shape[0], 3, preset.crop, preset.crop), dtype=torch.uint8, device=flat.device)

    device_augment._resample = allocated
    try:
        _feed(batches[:2], preset, "meta")  # warm-up
        stats = _feed(batches, preset, "meta")
    finally:
        device_augment._resample = real
    dispatch = op_dispatch_us()
    thread_us = 1e6 * stats.transform_cpu_s / images
    cat_us = _meta_cat_us(batches)
    ops["cat"] += 1  # the flat buffer's concatenation: timed on meta above, one op on a GPU
    device_ops = sum(ops.values())
    ops_us = device_ops * dispatch["median_us"] / BATCH
    return {"images": images, "batches": len(batches),
            "thread_cpu_us_per_image_on_meta": round(thread_us, 2),
            "meta_cat_us_per_image": round(cat_us, 2),
            "device_ops_per_batch": device_ops, "device_ops": dict(ops.most_common()),
            "op_host_us": dispatch, "device_ops_us_per_image": round(ops_us, 2),
            "us_per_image": round(thread_us - cat_us + ops_us, 2), "budget_us_per_image": 25.0}


def _meta_cat_us(batches: list) -> float:
    """The flat buffer's torch.cat on meta (a Python decomposition there), per image, as
    augment_on_device calls it: subtracted from the meta timing, counted as one op instead."""
    import numpy as np
    import torch

    spent = images = 0
    for batch in batches:
        sizes = 3 * np.asarray(batch.column("height")).astype(np.int64) * np.asarray(batch.column("width"))
        parts = [torch.empty(int(k), dtype=torch.uint8, device="meta") for k in sizes]
        flat = torch.empty(int(sizes.sum()) + 512, dtype=torch.uint8, device="meta")
        t = time.thread_time()
        for _ in range(5):
            torch.cat(parts, out=flat[:int(sizes.sum())])
        spent += (time.thread_time() - t) / 5
        images += len(sizes)
    return 1e6 * spent / images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24_500, help="generated images, train + 2% val")
    ap.add_argument("--work", default="/tmp/alexnet-bench/gpu-host-cost", help="cached dataset")
    ap.add_argument("--out", default="benchmarks/results/gpu_host_cost.json")
    ap.add_argument("--thread-batches", type=int, default=6, help="batches of 256 for part (b)")
    ap.add_argument("--quiet-load", type=float, default=2.5, help="1-minute load average to wait for")
    ap.add_argument("--max-wait-s", type=float, default=3600)
    ap.add_argument("--parts", default="ray-data,input-thread", help="comma-separated: ray-data, input-thread")
    args = ap.parse_args()

    import ray
    import ray.data

    from alexnet.config import load_config
    from pipelines.dataset import open_dataset
    from pipelines.read.loader import train_dataset, train_preset
    from synthetic_dataset import ingested

    cpus = os.cpu_count() or 1
    result = {"machine": {"cpu": cpu_model(), "cores": cpus, "python": platform.python_version()},
              "method": __doc__.split("\n\n", 2)[2].strip()}
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    data = ingested(Path(args.work), args.images, val_fraction=0.02)
    info = open_dataset(data["path"])
    cfg = load_config("torchvision").data
    result["data"] = {**data, "train_images": info.split_size("train")}
    preset = train_preset(info, **cfg.augmentation)
    ds = train_dataset(info, preset, seed=0, decode_on_device=True)
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)

    if out.is_file():  # a part not asked for keeps its last result
        result = {**json.loads(out.read_text()), **result}
    if "ray-data" in args.parts:
        quiet = wait_quiet(args.quiet_load, args.max_wait_s)
        result["ray_data_side"] = {**quiet, **ray_data_side(ds), **plan_cost(info, preset),
                                   "load_after": round(os.getloadavg()[0], 2)}
        save()
        print(json.dumps(result["ray_data_side"], indent=2), flush=True)
    if "input-thread" in args.parts:
        stream = iter(ds.iter_batches(batch_size=BATCH, batch_format="pyarrow", drop_last=True))
        batches = [_owned(b) for b in islice(stream, args.thread_batches)]
        stream.close()
        quiet = wait_quiet(args.quiet_load, args.max_wait_s)
        result["input_thread"] = {**quiet, **input_thread(batches, preset), "load_after": round(os.getloadavg()[0], 2)}
        save()
        print(json.dumps(result["input_thread"], indent=2), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
