"""Images per second of `alexnet ingest` (the real `ingest()` on a local Ray using every core)
against a single-process baseline (PIL decode + resize + re-encode + pyarrow write of the same
images), measured in the same run on generated JPEGs.

    .venv/bin/python benchmarks/ingest_bench.py [--images 3000] [--out benchmarks/results/ingest.json]

Ray's start-up is not timed (a cluster is already up when ingest runs); both sides do the same
work: read + sha256, decode, shorter side -> 256 px, JPEG q90, Parquet shards.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.dataset import SCHEMA  # noqa: E402
from alexnet.demo import CLASSES, render  # noqa: E402


def generate(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = CLASSES[i % len(CLASSES)]
        side = int(rng.integers(256, 401))
        img = render(name, side, rng)
        w = int(side * rng.uniform(1.0, 1.4))  # landscape, shorter side 256-400 px
        img = img.resize((w, side))
        (root / name).mkdir(parents=True, exist_ok=True)
        img.save(root / name / f"{i:05d}.jpg", quality=90)


def baseline(root: Path, out: Path, resize: int = 256, quality: int = 90, shard_rows: int = 2000) -> int:
    """What a single-process script would do: no Ray, one file after another."""
    files = sorted(root.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    rows, shard, n = [], 0, 0
    out.mkdir(parents=True)
    for f in files:
        data = f.read_bytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        s = resize / min(w, h)
        img = img.resize((max(resize, round(w * s)), max(resize, round(h * s))), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        rows.append({"id": hashlib.sha256(data).hexdigest(), "image": buf.getvalue(), "label": classes.index(f.parent.name),
                     "label_name": f.parent.name, "height": img.size[1], "width": img.size[0], "source": str(f)})
        n += 1
        if len(rows) == shard_rows or f == files[-1]:
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / f"part-{shard:04d}.parquet")
            rows, shard = [], shard + 1
    return n


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "ingest.json"))
    args = ap.parse_args()

    import ray

    from pipelines.ingest import IngestOptions, ingest

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        tmp = Path(tmp)
        print(f"generating {args.images} JPEGs...", flush=True)
        generate(tmp / "src", args.images)
        load_before = os.getloadavg()

        t = time.perf_counter()
        n_base = baseline(tmp / "src", tmp / "baseline")
        base_s = time.perf_counter() - t
        print(f"baseline: {n_base} images in {base_s:.1f} s", flush=True)

        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            t = time.perf_counter()
            s = ingest(tmp / "src", tmp / "ds", IngestOptions(resize=256, quality=90, val_fraction=0.0))
            ray_s = time.perf_counter() - t
        finally:
            ray.shutdown()
        load_after = os.getloadavg()
        print(f"alexnet ingest: {s.added} images in {ray_s:.1f} s", flush=True)

    result = {
        "benchmark": "ingest",
        "images": args.images,
        "baseline_images_per_s": round(n_base / base_s, 1),
        "ingest_images_per_s": round(s.added / ray_s, 1),
        "ratio": round((s.added / ray_s) / (n_base / base_s), 2),
        "baseline_s": round(base_s, 2),
        "ingest_s": round(ray_s, 2),
        "cores": cores,
        "cpu": cpu_model(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n| images | cores | baseline img/s | ingest img/s | ratio | load avg (1 min) before/after |\n"
          f"| --- | --- | --- | --- | --- | --- |\n"
          f"| {args.images} | {cores} | {result['baseline_images_per_s']} | {result['ingest_images_per_s']} | "
          f"**{result['ratio']}x** | {load_before[0]:.1f} / {load_after[0]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
