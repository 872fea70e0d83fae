"""Input pipeline throughput: Ray Data vs torch DataLoader vs the JPEG decode ceiling, in one run.

    .venv/bin/python benchmarks/input_pipeline_bench.py [--images 3000] [--cpus N] [--epochs 2]

Measures augmented images per second delivered to the train side by
  1. Ray Data: the real `pipelines.loader.train_dataset` on a local Ray with N CPUs, consumed
     with `iter_torch_batches` (uint8 NCHW, as the train loop does);
  2. torch DataLoader: a map-style Dataset over the same Parquet files applying the same
     TrainPreset per image, N worker processes, shuffled, same batch size;
  3. the decode ceiling: one process, decode only (no augmentation), per core, x N.
Images: generated 256 px JPEGs (smooth random scenes + noise, ~natural file sizes), 16 Parquet
shards in the dataset format, crop 224, flip, PCA lighting 0.1. Writes JSON and Markdown next to
--out. The machine may be shared: the 1-minute load average is recorded before and after.
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

    from pipelines.dataset import SCHEMA, DatasetInfo, load_info, write_info

    if (root / "dataset.json").is_file():
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


def decode_ceiling(info, limit: int = 1500) -> float:
    """Images per second one process decodes (decode only, the pipelines' decoder)."""
    import pyarrow.parquet as pq

    from pipelines.augment import decode_array

    blobs = []
    for path in info.shard_paths("train"):
        blobs += pq.read_table(path, columns=["image"]).column("image").to_pylist()
        if len(blobs) >= limit:
            break
    decode_array(blobs[0])  # imports the decoder's libraries outside the clock
    start = time.perf_counter()
    for data in blobs[:limit]:
        decode_array(data)
    return min(limit, len(blobs)) / (time.perf_counter() - start)


def ray_data_rate(info, cpus: int, epochs: int, crop: int) -> list[float]:
    import ray
    import torch

    from pipelines.loader import train_dataset

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds = train_dataset(info, crop=crop, pca_std=0.1, flip=True, seed=0, epoch=0)
        rates = []
        for _ in range(epochs):
            n, start = 0, time.perf_counter()
            for batch in ds.iter_torch_batches(batch_size=BATCH, dtypes={"image": torch.uint8, "label": torch.long}):
                n += len(batch["label"])
            rates.append(n / (time.perf_counter() - start))
        return rates
    finally:
        ray.shutdown()


class ParquetImages:
    """Map-style torch Dataset over the Parquet shards: the same decoder and TrainPreset as the
    Ray Data tasks, one image per item."""

    def __init__(self, info, crop: int):
        import pyarrow.parquet as pq

        from pipelines.augment import TrainPreset

        self.blobs, self.labels, self.ids = [], [], []
        for path in info.shard_paths("train"):
            t = pq.read_table(path, columns=["id", "image", "label"])
            self.blobs += t.column("image").to_pylist()
            self.labels += t.column("label").to_pylist()
            self.ids += t.column("id").to_pylist()
        self.preset = TrainPreset(crop=crop, eigval=tuple(info.pca_eigval),
                                  eigvec=tuple(map(tuple, info.pca_eigvec)), pca_std=0.1, flip=True)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        import torch

        from pipelines.augment import decode_array, image_key, image_rng

        rng = image_rng(0, self.epoch, image_key(self.ids[i]))
        return torch.from_numpy(self.preset.array(decode_array(self.blobs[i]), rng)), self.labels[i]


def dataloader_rate(info, workers: int, epochs: int, crop: int) -> list[float]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(ParquetImages(info, crop), batch_size=BATCH, shuffle=True, num_workers=workers)
    rates = []
    for _ in range(epochs):
        n, start = 0, time.perf_counter()
        for images, labels in loader:
            assert images.dtype == torch.uint8
            n += len(labels)
        rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256, help="stored image side, px")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray CPUs = DataLoader workers")
    parser.add_argument("--shards", type=int, default=16, help="Parquet files (one row group each)")
    parser.add_argument("--epochs", type=int, default=2, help="the best epoch is reported (the first warms up)")
    parser.add_argument("--data", default="/tmp/alexnet-bench/input-pipeline")
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()

    from pipelines.dataset import load_info

    info = load_info(make_dataset(Path(args.data), args.images, args.size, args.shards))
    load_before = os.getloadavg()[0]
    per_core = decode_ceiling(info)
    ray_rates = ray_data_rate(info, args.cpus, args.epochs, args.crop)
    torch_rates = dataloader_rate(info, args.cpus, args.epochs, args.crop)
    load_after = os.getloadavg()[0]
    ray_best, torch_best = max(ray_rates), max(torch_rates)
    ceiling = per_core * args.cpus
    result = {
        "images": args.images, "shards": args.shards, "stored_px": args.size, "crop": args.crop, "batch": BATCH, "cpus": args.cpus,
        "ray_data_images_per_s": [round(r, 1) for r in ray_rates],
        "dataloader_images_per_s": [round(r, 1) for r in torch_rates],
        "decode_per_core_images_per_s": round(per_core, 1), "decode_ceiling_images_per_s": round(ceiling, 1),
        "ratio_ray_vs_dataloader": round(ray_best / torch_best, 3),
        "fraction_of_decode_ceiling": round(ray_best / ceiling, 3),
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(load_after, 2)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    md = (f"| pipeline ({args.cpus} CPUs, {args.images} x {args.size} px JPEG -> {args.crop}) | images/s |\n"
          f"|---|---|\n| Ray Data train_dataset -> iter_torch_batches | {ray_best:.0f} |\n"
          f"| torch DataLoader, {args.cpus} workers | {torch_best:.0f} |\n"
          f"| decode-only ceiling ({per_core:.0f}/core x {args.cpus}) | {ceiling:.0f} |\n\n"
          f"Ray/DataLoader = {ray_best / torch_best:.2f}x; Ray/ceiling = {ray_best / ceiling:.0%}; "
          f"{os.cpu_count()} cores, {cpu_model()}, load avg {load_before:.1f} -> {load_after:.1f}\n")
    out.with_suffix(".md").write_text(md)
    print(json.dumps(result, indent=2))
    print(md)


if __name__ == "__main__":
    main()
