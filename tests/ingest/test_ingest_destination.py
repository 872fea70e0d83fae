"""What `alexnet ingest` may write into, and what it removes: never a file it did not write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import storage
from pipelines.dataset import open_dataset
from pipelines.errors import UserError
from pipelines.ingest import IngestOptions, ingest
from pipelines.ingest.lock import LOCK_FILE, LocalLock, LockBusy

OPTS = IngestOptions(resize=48, min_side=16, val_fraction=0.25)


def _images(root: Path, n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


@pytest.mark.fault("an ImageNet-style folder (train/ and val/ with images, rejects.csv) given as "
                   "DEST, via the API and the CLI", inputs=2,
                   outcome="refused as not a dataset (CLI: exit 2, no traceback); every file in it byte-"
                           "identical")
def test_an_imagenet_style_folder_given_as_dest_is_refused_untouched(ray_local, tmp_path):
    dest = tmp_path / "imagenet"
    _images(dest / "train")  # class folders, as a source would have them
    _images(dest / "val", n=2, seed=1)
    Image.new("RGB", (32, 32)).save(dest / "val" / "ILSVRC2012_val_00000001.JPEG")  # flat val/, as ImageNet's
    Image.new("RGB", (32, 32)).save(dest / "train" / "loose.jpg")
    (dest / "rejects.csv").write_text("path,reason\n")
    before = snapshot(dest)
    with pytest.raises(UserError, match=r"imagenet is a non-empty directory that is not a dataset"):
        ingest(_images(tmp_path / "src"), dest, OPTS)
    assert snapshot(dest) == before
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", str(tmp_path / "src"), str(dest)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a dataset" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert snapshot(dest) == before


@pytest.mark.fault("a second ingest while another holds DEST's lock and has an unlisted shard in "
                   "progress, via the API and the CLI", inputs=2,
                   outcome="refused naming the holder's pid (CLI: exit 2, one line); DEST byte-identical; "
                           "once free, the next ingest adds its 4 images and removes the dead shard and the "
                           "lock")
def test_a_locked_destination_is_refused_and_left_alone(ray_local, tmp_path):
    src, dest = _images(tmp_path / "src"), tmp_path / "ds"
    first = ingest(src, dest, OPTS)
    _images(src, n=6)  # new images to add
    (dest / "train" / f"part-{'a' * 8}-{'b' * 8}.parquet").write_bytes(b"another run's shard, being written")
    held = LocalLock(storage.locate(dest))
    held.acquire()  # what a running ingest holds
    try:
        before = snapshot(dest)
        with pytest.raises(LockBusy, match=rf"{dest}: another `alexnet ingest` is writing this dataset \(pid {os.getpid()}"):
            ingest(src, dest, OPTS)
        assert snapshot(dest) == before  # its unlisted shard included
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", str(src), str(dest)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "another `alexnet ingest` is writing" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert snapshot(dest) == before
    finally:
        held.release()
    second = ingest(src, dest, OPTS)  # once free, the unlisted shard is a dead run's leftover
    assert second.added == 4 and second.previous_version == first.version
    assert not (dest / "train" / f"part-{'a' * 8}-{'b' * 8}.parquet").exists()
    assert not (dest / LOCK_FILE).exists()
    assert open_dataset(dest).num_images == 12


@pytest.mark.fault("a killed first run's leftovers: a lock file no process holds, an unlisted shard,"
                   " a temporary shard", inputs=3,
                   outcome="the next ingest completes with all 8 images; only listed shards on disk, nothing"
                           " else in DEST")
def test_a_killed_first_run_is_cleaned_up_and_completed(ray_local, tmp_path):
    src, dest = _images(tmp_path / "src"), tmp_path / "ds"
    (dest / "train").mkdir(parents=True)
    (dest / LOCK_FILE).write_text('{"pid": 1}')  # a killed run's lock file: no process holds it
    (dest / "train" / f"part-{'c' * 8}-{'d' * 8}.parquet").write_bytes(b"half")
    (dest / "train" / f".part-{'c' * 8}-{'e' * 8}.parquet.tmp-1234").write_bytes(b"half")
    s = ingest(src, dest, OPTS)
    assert s.added == 8 and s.previous_version is None
    listed = {rel for rels in open_dataset(dest).shards.values() for rel in rels}
    on_disk = {f"{p.parent.name}/{p.name}" for split in ("train", "val") for p in (dest / split).iterdir()}
    assert on_disk == listed
    assert sorted(os.listdir(dest)) == ["dataset.json", "duplicates.csv", "rejects.csv", "train", "val"]


@pytest.mark.fault("a first run that fails (--strict, a truncated JPEG) while a user saves a file "
                   "into DEST", inputs=1,
                   outcome="DEST holds only the user's file: no shard, lock or empty split folder of the "
                           "run's")
def test_a_failed_first_run_removes_only_what_it_wrote(ray_local, tmp_path):
    src, dest = _images(tmp_path / "src"), tmp_path / "ds"
    (src / "cat" / "truncated.jpg").write_bytes((src / "cat" / "0.jpg").read_bytes()[:300])

    def meanwhile(message: str) -> None:  # someone saves a file into DEST while the run encodes
        if message.startswith("encoding"):
            (dest / "notes.txt").write_text("mine")

    with pytest.raises(UserError, match="--strict: 1 file"):
        ingest(src, dest, IngestOptions(resize=48, min_side=16, strict=True), progress=meanwhile)
    assert snapshot(dest) == {"notes.txt": b"mine"}  # no shard, no lock, no empty split folder


@pytest.mark.fault("a lock file planted as a symlink (ingest's DEST/.ingest.lock, the scheduler's state lock) "
                   "or as a FIFO", inputs=3,
                   outcome="refused naming the lock file; the file it points to is neither truncated nor written")
def test_a_planted_lock_link_is_refused_and_its_target_left_alone(tmp_path):
    from jobs.schedule_state import locked

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / LOCK_FILE).symlink_to(victim)
    with pytest.raises(UserError, match=f"{LOCK_FILE}: a symbolic link"):
        LocalLock(storage.locate(dest)).acquire()
    state = tmp_path / "schedules" / "state.json"
    state.parent.mkdir()
    state.with_name("state.json.lock").symlink_to(victim)
    with pytest.raises(UserError, match="state.json.lock: a symbolic link"):
        with locked(state):
            pass
    assert victim.read_text() == "precious"
    fifo = tmp_path / "fifo-dest"
    fifo.mkdir()
    os.mkfifo(fifo / LOCK_FILE)
    with pytest.raises(UserError, match="not a regular file"):
        LocalLock(storage.locate(fifo)).acquire()
