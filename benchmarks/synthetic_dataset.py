"""The benchmarks' dataset: generated JPEGs shaped like an ImageNet copy ingested at 256 px,
ingested with the real `pipelines.ingest`, cached between runs.

Images are `alexnet.demo.render` scenes, shorter side 256 px, longer side 256-384 px, one in
five portrait; written as JPEG (quality 90) by one process per core. Ingest at --resize 256 then
keeps their bytes (they already fit), as it does for ImageNet files of that size.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SHORTER = 256
LONGER = (256, 384)


def _write(job: tuple[str, int, int, int]) -> int:
    import numpy as np

    from alexnet.demo import CLASSES, render

    root, start, count, shorter = job
    rng = np.random.default_rng(start)
    longer = (round(LONGER[0] * shorter / SHORTER), round(LONGER[1] * shorter / SHORTER))
    for k in range(start, start + count):
        name = CLASSES[k % len(CLASSES)]
        side = int(rng.integers(longer[0], longer[1] + 1))
        size = (shorter, side) if rng.random() < 0.2 else (side, shorter)  # (width, height)
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        render(name, size, rng).save(folder / f"{k:07d}.jpg", quality=90)
    return count


def write_jpegs(root: Path, images: int, procs: int, shorter: int = SHORTER) -> Path:
    """`images` JPEGs under root/<class>/, written by `procs` processes."""
    per = -(-images // procs)
    jobs = [(str(root), start, min(per, images - start), shorter) for start in range(0, images, per)]
    # spawned, not forked: the caller may have Ray's threads running
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sum(pool.map(_write, jobs)) == images
    return root


def ingested(work: Path, images: int, *, val_fraction: float, procs: int | None = None, shorter: int = SHORTER) -> dict:
    """work/ds: `images` generated JPEGs ingested (needs Ray initialised), reused when the cached
    dataset has as many images. Returns {"path", "generate_s", "ingest_s", "reused"}."""
    from pipelines.dataset import INFO_FILE, open_dataset
    from pipelines.ingest import IngestOptions, ingest

    dest = work / "ds"
    if (dest / INFO_FILE).is_file():
        info = open_dataset(dest)
        if info.split_size("train") + info.split_size("val") == images:
            return {"path": str(dest), "generate_s": 0.0, "ingest_s": 0.0, "reused": True}
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    src = write_jpegs(work / "src", images, procs or os.cpu_count() or 1, shorter)
    generated = time.perf_counter()
    ingest(src, dest, IngestOptions(resize=shorter, val_fraction=val_fraction, shard_mb=64))
    done = time.perf_counter()
    shutil.rmtree(src)
    return {"path": str(dest), "generate_s": generated - start, "ingest_s": done - generated, "reused": False}
