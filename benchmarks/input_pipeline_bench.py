"""Input pipeline throughput at steady state: Ray Data vs torch DataLoader, in one run.

    .venv/bin/python benchmarks/input_pipeline_bench.py [--images 6000] [--epochs 5] [--cpus N]

Measures augmented images per second delivered to the train side, over every image after the
first --warmup ones (>= 20,000 timed images by default: 6,000 images x 5 epochs - 2,000), by
  1. Ray Data: the real `pipelines.read.loader.train_dataset` stream of --epochs epochs (one execution,
     as training runs it) on a local Ray with N CPUs, consumed with `iter_torch_batches` (uint8
     NCHW, as the train loop does); and the same stream with one work unit per map task (the
     layout before loader.TASK_ROWS), the baseline of that change;
  2. torch DataLoader: a map-style Dataset over the same Parquet files applying the same decoder
     (pipelines.decode.decode_stored) and TrainPreset per image, N persistent worker processes,
     shuffled, same batch size, the same number of epochs;
and the CPU time per image: Ray's worker processes (all `ray::` processes, from psutil) over the
timed window, against one process's decode-only and decode + augment cost.
Images: generated 256 px JPEGs (smooth random scenes + noise, ~natural file sizes), 16 Parquet
shards in the dataset format, crop 224 (paper crop, resize 256), flip, PCA lighting 0.1. Writes
JSON and Markdown next to --out. The 1-minute load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

BATCH = 256


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_dataset(root: Path, images: int, size: int, shards: int = 16) -> Path:
    """Write `images` JPEGs of size x size into `shards` Parquet files + dataset.json (cached)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipelines.dataset import INFO_FILE, SCHEMA, DatasetInfo, load_info, write_info

    if (root / INFO_FILE).is_file():
        info = load_info(root)
        if info.split_size("train") == images and len(info.shard_paths("train")) == shards:
            return root
        import shutil

        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    per = -(-images // shards)
    rel = []
    for s in range(shards):
        rows = {name: [] for name in SCHEMA.names}
        for _ in range(min(per, images - s * per)):
            low = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
            pixels = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
            label = int(rng.integers(0, 10))
            for k, v in zip(SCHEMA.names, [hashlib.sha256(data).hexdigest(), data, label, str(label), size, size, "gen"]):
                rows[k].append(v)
        name = f"train/part-{s:03d}.parquet"
        pq.write_table(pa.table(rows, schema=SCHEMA), root / name)
        rel.append(name)
    eigvec = [[0.58, 0.70, -0.41], [0.58, 0.0, 0.81], [0.58, -0.71, -0.41]]
    write_info(root, DatasetInfo(classes=[str(i) for i in range(10)], counts={"train": {"0": images}, "val": {}},
                                 shards={"train": rel, "val": []}, pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3,
                                 pca_eigval=[0.2, 0.02, 0.005], pca_eigvec=eigvec, version="bench",
                                 image_format="jpeg"))
    return root


def _blobs(info, limit: int) -> list[bytes]:
    import pyarrow.parquet as pq

    blobs = []
    for path in info.shard_paths("train"):
        blobs += pq.read_table(path, columns=["image"]).column("image").to_pylist()
        if len(blobs) >= limit:
            break
    return blobs[:limit]


def single_process_costs(info, crop: int, limit: int = 1500) -> dict:
    """Milliseconds per image in one process: decode only, and decode + the train augmentation."""
    from pipelines.read.loader import train_preset
    from pipelines.decode import decode_stored

    blobs = _blobs(info, limit)
    preset = train_preset(info, crop=crop, resize=256, pca_lighting=0.1, flip=True)
    decode_stored(blobs[0])  # imports the decoder's libraries outside the clock
    start = time.process_time()
    for data in blobs:
        decode_stored(data, height=256, width=256, shorter_side=256)
    decode_ms = (time.process_time() - start) * 1000 / len(blobs)
    plans = preset.plans(np.full(len(blobs), 256), np.full(len(blobs), 256), np.arange(len(blobs), dtype=np.uint64),
                         seed=0)
    out = np.empty((3, crop, crop), dtype=np.uint8)
    start = time.process_time()
    for data, plan in zip(blobs, plans):
        preset.execute(decode_stored(data, height=256, width=256, shorter_side=256), plan, out)
    augment_ms = (time.process_time() - start) * 1000 / len(blobs)
    return {"decode_ms": round(decode_ms, 3), "decode_and_augment_ms": round(augment_ms, 3)}


def _ray_cpu_seconds() -> float:
    """CPU seconds used so far by this Ray session's worker processes (the raylet's children: the
    Ray Data tasks and actors), not other Ray clusters on the machine."""
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    total = 0.0
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _timed(batches, warmup: int, on_start=None) -> tuple[float, int]:
    """Images per second over the batches after the first `warmup` images, and the count timed."""
    seen, start, timed = 0, None, 0
    for labels in batches:
        seen += labels
        if start is None and seen >= warmup:
            start = time.perf_counter()
            if on_start:
                on_start()
        elif start is not None:
            timed += labels
    return timed / (time.perf_counter() - start), timed


def ray_data_rate(info, cpus: int, epochs: int, crop: int, warmup: int, task_rows: int | None = None) -> dict:
    import ray
    import torch

    from pipelines.read import loader
    from pipelines.read.loader import train_dataset, train_preset

    default_task_rows = loader.TASK_ROWS
    if task_rows is not None:
        loader.TASK_ROWS = task_rows  # read by the driver when it plans the stream's blocks
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        preset = train_preset(info, crop=crop, resize=256, pca_lighting=0.1, flip=True)
        ds = train_dataset(info, preset, seed=0, epochs=epochs)
        cpu = {}
        batches = (len(b["label"]) for b in ds.iter_torch_batches(batch_size=BATCH,
                                                                  dtypes={"image": torch.uint8, "label": torch.long}))
        rate, timed = _timed(batches, warmup, on_start=lambda: cpu.setdefault("start", _ray_cpu_seconds()))
        worker_cpu = _ray_cpu_seconds() - cpu["start"]
        return {"images_per_s": round(rate, 1), "timed_images": timed, "map_tasks": _map_tasks(info, cpus, epochs),
                "ray_worker_cpu_ms_per_image": round(worker_cpu * 1000 / timed, 3)}
    finally:
        loader.TASK_ROWS = default_task_rows
        ray.shutdown()


def _map_tasks(info, cpus: int, epochs: int) -> int:
    """Map tasks in the stream: blocks of its item list, as the loader plans them now."""
    from pipelines.read import loader

    return loader.stream_blocks(loader._units(info.shard_paths("train"), cpus, 128), epochs, cpus)


class ParquetImages:
    """Map-style torch Dataset over the Parquet shards: the same decoder and TrainPreset as the
    Ray Data tasks, one image per item (its plan drawn for it alone, from its stored size). Also
    the DataLoader-fed baseline of benchmarks/train_bench.py. Persistent workers keep their copy,
    so every epoch draws epoch 0's plans again: the same work per image, which is what is timed."""

    def __init__(self, info, preset, seed: int = 0):
        import pyarrow.parquet as pq

        self.blobs, self.labels, self.keys, self.sizes = [], [], [], []
        for path in info.shard_paths("train"):
            t = pq.read_table(path, columns=["id", "image", "label", "height", "width"])
            self.blobs += t.column("image").to_pylist()
            self.labels += t.column("label").to_pylist()
            self.keys += [int(i[:15], 16) for i in t.column("id").to_pylist()]
            self.sizes += zip(t.column("height").to_pylist(), t.column("width").to_pylist())
        self.preset, self.seed, self.epoch = preset, seed, 0

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        import torch

        from pipelines.decode import decode_stored

        h, w = self.sizes[i]
        plan = self.preset.plans([w], [h], np.array([self.keys[i]], dtype=np.uint64), seed=self.seed,
                                 epoch=self.epoch)[0]
        out = np.empty((3, self.preset.crop, self.preset.crop), dtype=np.uint8)
        self.preset.execute(decode_stored(self.blobs[i], height=h, width=w), plan, out)
        return torch.from_numpy(out), self.labels[i]


def dataloader_rate(info, workers: int, epochs: int, crop: int, warmup: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from pipelines.read.loader import train_preset

    preset = train_preset(info, crop=crop, resize=256, pca_lighting=0.1, flip=True)
    loader = DataLoader(ParquetImages(info, preset), batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)

    def batches():
        for _ in range(epochs):
            for images, labels in loader:
                assert images.dtype == torch.uint8
                yield len(labels)

    rate, timed = _timed(batches(), warmup)
    return {"images_per_s": round(rate, 1), "timed_images": timed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--size", type=int, default=256, help="stored image side, px")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray CPUs = DataLoader workers")
    parser.add_argument("--shards", type=int, default=16, help="Parquet files (one row group each)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs streamed by each pipeline")
    parser.add_argument("--warmup", type=int, default=2000, help="images delivered before the clock starts")
    parser.add_argument("--data", default="/tmp/alexnet-bench/input-pipeline")
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()

    from pipelines.dataset import load_info

    info = load_info(make_dataset(Path(args.data), args.images, args.size, args.shards))
    load_before = os.getloadavg()[0]
    single = single_process_costs(info, args.crop)
    ray_side = ray_data_rate(info, args.cpus, args.epochs, args.crop, args.warmup)
    ray_unit_tasks = ray_data_rate(info, args.cpus, args.epochs, args.crop, args.warmup, task_rows=0)
    torch_side = dataloader_rate(info, args.cpus, args.epochs, args.crop, args.warmup)
    load_after = os.getloadavg()[0]
    ratio = ray_side["images_per_s"] / torch_side["images_per_s"]
    result = {
        "images": args.images, "epochs": args.epochs, "warmup_images": args.warmup, "shards": args.shards,
        "stored_px": args.size, "crop": args.crop, "batch": BATCH, "cpus": args.cpus,
        "ray_data": ray_side, "ray_data_one_unit_per_task": ray_unit_tasks, "dataloader": torch_side,
        "single_process": single, "ratio_ray_vs_dataloader": round(ratio, 3),
        "ratio_ray_vs_one_unit_per_task": round(ray_side["images_per_s"] / ray_unit_tasks["images_per_s"], 3),
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(load_after, 2)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = (f"| pipeline ({args.cpus} CPUs, {args.images} x {args.size} px JPEG x {args.epochs} epochs -> {args.crop}) "
          f"| images/s | timed images |\n|---|---|---|\n"
          f"| Ray Data train_dataset -> iter_torch_batches ({ray_side['map_tasks']} map tasks) | "
          f"{ray_side['images_per_s']:.0f} | {ray_side['timed_images']} |\n"
          f"| the same, one work unit per map task ({ray_unit_tasks['map_tasks']} tasks) | "
          f"{ray_unit_tasks['images_per_s']:.0f} | {ray_unit_tasks['timed_images']} |\n"
          f"| torch DataLoader, {args.cpus} persistent workers | {torch_side['images_per_s']:.0f} | "
          f"{torch_side['timed_images']} |\n\n"
          f"Ray/DataLoader = {ratio:.2f}x; Ray workers' CPU {ray_side['ray_worker_cpu_ms_per_image']:.2f} ms/image vs "
          f"{single['decode_ms']:.2f} ms decode-only and {single['decode_and_augment_ms']:.2f} ms decode + augment "
          f"in one process; {os.cpu_count()} cores, {cpu_model()}, load avg {load_before:.1f} -> {load_after:.1f}\n")
    out.with_suffix(".md").write_text(md)
    print(json.dumps(result, indent=2))
    print(md)


if __name__ == "__main__":
    main()
