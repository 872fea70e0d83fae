"""Two ingests into one destination: the second is refused while the first runs, touching nothing.
An ingest killed with SIGKILL mid-way leaves nothing a reader takes for data; a re-run completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.dataset import load_info, open_dataset
from pipelines.errors import UserError
from pipelines.ingest import IngestOptions, ingest

OPTS = dict(resize=64, val_fraction=0.2, shard_mb=1)


def _write(root: Path, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        folder = root / ("odd" if i % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(160, 200, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=95)


def _a_second_ingest_is_refused(src: Path, dest: Path) -> None:
    """While another process ingests into `dest`: refused at once, and none of the running
    ingest's files is removed (the CLI's exit 2 is tested in test_ingest_destination.py)."""
    running = set(_unlisted(dest))
    with pytest.raises(UserError, match=r"another `alexnet ingest` is writing this dataset \(pid \d+ on "):
        ingest(src, dest, IngestOptions(**OPTS))
    # Listed by now, or still being written: never removed. A temporary file the running ingest
    # has finished meanwhile is gone under its temporary name and there under its own.
    assert all(p.exists() or _finished(p) for p in running)


def _finished(temp: Path) -> bool:
    """`.NAME.tmp-XXXXXXXX` (pipelines.atomic.temp_name) renamed to NAME."""
    name, dot, _ = temp.name.rpartition(".tmp-")
    return bool(dot) and name.startswith(".") and (temp.parent / name[1:]).exists()


def _unlisted(dest: Path) -> list[Path]:
    listed = {rel for rels in load_info(dest).shards.values() for rel in rels}
    return [p for split in ("train", "val") for p in (dest / split).glob("*")
            if f"{split}/{p.name}" not in listed]


@pytest.mark.fault("SIGKILL of `alexnet ingest` and its local Ray mid-encode; a concurrent ingest "
                   "tried meanwhile", inputs=2,
                   outcome="the concurrent ingest refused, the running one's shards kept; readers see the "
                           "previous version whole (20 images); the rerun completes all 1200 images once, no"
                           " unlisted shard, no lock")
@pytest.mark.slow
def test_sigkill_mid_ingest_leaves_the_previous_version_and_a_rerun_completes(ray_local, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "ds"
    _write(src, 0, 20)
    before = ingest(src, dest, IngestOptions(**OPTS))
    _write(src, 20, 1200)  # ~65 KB each at quality 95; --shard-mb 1 makes ~70 shards, one at a time

    cmd = [sys.executable, "-m", "jobs.cli", "ingest", str(src), str(dest), "--resize", "64",
           "--val-fraction", "0.2", "--shard-mb", "1", "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if _unlisted(dest):  # the encode pass has written its first shard
                break
            time.sleep(0.05)
        assert proc.poll() is None, "ingest finished before it could be killed; make the dataset bigger"
        _a_second_ingest_is_refused(src, dest)
        assert proc.poll() is None, "ingest finished before it could be killed; make the dataset bigger"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the local Ray it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    # Readers see the previous version, whole; the killed run's shards are invisible to them.
    info = open_dataset(dest)
    assert info.version == before.version and info.num_images == 20
    assert _unlisted(dest) and (dest / ".ingest.lock").exists()  # the kernel released its lock, the file stays

    after = ingest(src, dest, IngestOptions(**OPTS))
    assert not _unlisted(dest) and not (dest / ".ingest.lock").exists()
    info = open_dataset(dest)
    ids = [i for split in ("train", "val") for s in info.shard_paths(split) for i in pq.read_table(s, columns=["id"])["id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 1200 == info.num_images
    assert after.added == 1180 and after.already_present == 20
    listed = {os.path.join(info.path, rel) for rels in info.shards.values() for rel in rels}
    on_disk = {str(p) for split in ("train", "val") for p in (dest / split).glob("*")}
    assert on_disk == listed
