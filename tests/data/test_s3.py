"""Datasets on object storage: ingest to and from s3://, read them back with the validating
reader, Ray Data, train's input checks, evaluate and predict. The server is moto's standalone
S3 server on loopback (conftest.s3_server), reached only through AWS_ENDPOINT_URL and the AWS_*
keys, exactly as a user reaches S3; nothing in-process is patched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
from PIL import Image

from pipelines import storage
from pipelines.atomic import write_atomic
from pipelines.dataset import INFO_FILE, load_info, open_dataset
from pipelines.errors import UserError
from pipelines.ingest import IngestOptions, ingest
from pipelines.ingest.lock import LOCK_FILE, LockBusy, ObjectLock

OPTS = IngestOptions(resize=72, min_side=16, val_fraction=0.25)


def _images(root: Path, n: int = 4, seed: int = 0, size=(80, 96)) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.jpg",
                                                                                       quality=95)
    return root


def objects(uri: str) -> dict[str, int]:
    """Every object under `uri` -> its size."""
    loc = storage.locate(uri)
    return {storage.relative(loc, e): e.size for e in storage.listing(loc, recursive=True)
            if e.type == pyarrow.fs.FileType.File}


def _unlisted(uri: str) -> list[str]:
    listed = {rel for rels in load_info(uri).shards.values() for rel in rels}
    return [k for k in objects(uri) if k.startswith(("train/", "val/")) and k not in listed]


@pytest.mark.fault("a dataset.json on S3 listing a shard outside the dataset (`../`)", inputs=1,
                   outcome="one line naming the file and the shards field; the real dataset re-ingested adds"
                           " nothing")
def test_ingest_local_to_s3_reingest_adds_nothing_and_the_reader_validates(ray_local, s3_bucket, tmp_path):
    src, dest = _images(tmp_path / "src"), f"{s3_bucket}/datasets/pets"
    first = ingest(src, dest, OPTS)
    assert first.added == 8 and first.path == dest
    info = open_dataset(dest)
    assert info.path == dest and info.num_images == 8 and info.params["source"] == str(src)
    stored = objects(dest)
    assert {"dataset.json", "rejects.csv", "duplicates.csv"} <= set(stored) and LOCK_FILE not in stored
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()  # no local folder named after the URI

    again = ingest(src, dest, OPTS)
    assert (again.added, again.new_shards, again.version) == (0, 0, first.version)
    assert {k for k in objects(dest) if k.startswith(("train/", "val/"))} == \
           {k for k in stored if k.startswith(("train/", "val/"))}

    meta = json.loads(storage.read_bytes(storage.locate(f"{dest}/{INFO_FILE}")))
    meta["shards"]["train"] = [f"../other/{meta['shards']['train'][0]}"]
    bad = f"{s3_bucket}/datasets/bad"
    write_atomic(f"{bad}/{INFO_FILE}", json.dumps(meta))
    with pytest.raises(UserError, match=rf"^{bad}/{INFO_FILE}: field 'shards': expected paths relative"):
        open_dataset(bad)


@pytest.mark.fault("S3 URIs carrying credentials (user:secret@, ?secret_key=)", inputs=2,
                   outcome="refused with the credentials masked in the message")
def test_uris_with_credentials_are_refused_without_echoing_them(s3_bucket):
    with pytest.raises(UserError, match=r"s3://\*\*\*@.*credentials and options do not belong in the URI") as err:
        storage.locate(f"s3://AKIAEXAMPLE:wJalrXUtnFEMI@{s3_bucket[5:]}/ds")
    assert "wJalrXUtnFEMI" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    with pytest.raises(UserError, match=r"\?secret_key=\*\*\*") as err:
        storage.locate(f"{s3_bucket}/ds?secret_key=abcSECRET")
    assert "abcSECRET" not in str(err.value)


@pytest.mark.fault("an append to an S3 dataset that fails (--strict, a truncated JPEG)", inputs=1,
                   outcome="the bucket's objects and dataset.json byte-identical; the previous version opens")
def test_a_failed_ingest_on_s3_leaves_the_previous_version_and_none_of_its_objects(ray_local, s3_bucket, tmp_path):
    src, dest = _images(tmp_path / "src"), f"{s3_bucket}/ds"
    first = ingest(src, dest, OPTS)
    before = objects(dest)
    info_before = storage.read_bytes(storage.locate(f"{dest}/{INFO_FILE}"))
    _images(src, n=7)
    (src / "cat" / "truncated.jpg").write_bytes((src / "cat" / "0000.jpg").read_bytes()[:400])
    with pytest.raises(UserError, match="--strict: 1 file"):
        ingest(src, dest, IngestOptions(resize=72, min_side=16, val_fraction=0.25, strict=True))
    assert objects(dest) == before
    assert storage.read_bytes(storage.locate(f"{dest}/{INFO_FILE}")) == info_before
    assert open_dataset(dest).version == first.version


@pytest.mark.fault("a second ingest while another holds the S3 lock object; the lock stolen mid-run "
                   "by another host", inputs=2,
                   outcome="the second refused naming the holder and heartbeat; the robbed run commits "
                           "nothing and removes its shards; the previous version opens")
def test_the_lock_object_refuses_a_second_ingest_and_a_lost_lock_commits_nothing(ray_local, s3_bucket, tmp_path):
    src, dest = _images(tmp_path / "src"), f"{s3_bucket}/ds"
    first = ingest(src, dest, OPTS)
    _images(src, n=6)
    before = objects(dest)

    other = ObjectLock(storage.locate(dest))  # a running ingest elsewhere
    other.acquire()
    try:
        with pytest.raises(LockBusy, match=rf"{dest}: another `alexnet ingest` is writing this dataset \(pid "
                                           rf"{os.getpid()} on .*last heartbeat \d+ s ago"):
            ingest(src, dest, OPTS)
        assert set(objects(dest)) == set(before) | {LOCK_FILE}
    finally:
        other.release()

    def take_over(message: str) -> None:  # mid-run, another host's run overwrites the lock object
        if message.startswith("encoding"):
            thief = ObjectLock(storage.locate(dest))
            thief._write()

    with pytest.raises(UserError, match=rf"{dest}: this ingest lost its lock to another run .* nothing was committed"):
        ingest(src, dest, OPTS, progress=take_over)
    assert open_dataset(dest).version == first.version
    assert set(objects(dest)) == set(before) | {LOCK_FILE}  # its shards removed; the thief's lock is the thief's


@pytest.mark.fault("a manifest on S3 whose rows name an absolute local path or another bucket", inputs=2,
                   outcome="UserError naming the row; nothing of the ingest nodes' own disks or other stores read")
def test_a_manifest_on_s3_names_only_its_own_bucket(s3_bucket):
    from pipelines.ingest.sources import list_source

    for row, says in (("/etc/hostname", "is an absolute local path in a manifest on s3://"),
                      ("s3://someone-else/x.jpg", "is not on the manifest's own store")):
        write_atomic(f"{s3_bucket}/m.csv", f"path,label\nraw/cat/0.jpg,cat\n{row},dog\n")
        with pytest.raises(UserError, match=rf"m.csv row 3: {row} {says}"):
            list_source(f"{s3_bucket}/m.csv")


def test_remote_folder_and_remote_manifest_to_s3(ray_local, s3_bucket, tmp_path):
    local = _images(tmp_path / "src", n=3)
    fs, _ = pyarrow.fs.FileSystem.from_uri(s3_bucket)
    pyarrow.fs.copy_files(str(local), f"{s3_bucket[5:]}/raw", destination_filesystem=fs)
    (local / "notes.txt").write_text("x")
    s = ingest(f"{s3_bucket}/raw", f"{s3_bucket}/ds", OPTS)
    assert s.added == 6 and load_info(f"{s3_bucket}/ds").classes == ["cat", "dog"]
    assert load_info(f"{s3_bucket}/ds").params["source"] == f"{s3_bucket}/raw"
    manifest = "path,label,split\n" + "".join(f"raw/{c}/{i:04d}.jpg,{c},{'val' if i == 0 else 'train'}\n"
                                              for c in ("cat", "dog") for i in range(3))
    write_atomic(f"{s3_bucket}/m.csv", manifest)
    m = ingest(f"{s3_bucket}/m.csv", f"{s3_bucket}/from-manifest", OPTS)
    assert {k: sum(v.values()) for k, v in m.counts.items()} == {"train": 4, "val": 2}
    assert m.version != s.version  # same images, other splits


def _model(info, crop=64, resize=72):
    import torch

    from alexnet import build_model
    from alexnet.serve.model_files import Classifier, ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec("torchvision", 32, tuple(info.classes), tuple(info.pixel_mean), tuple(info.pixel_std), crop, resize)
    return Classifier(build_model("torchvision", info.num_classes, hidden=32), spec).eval()


@pytest.mark.slow
def test_ray_data_train_check_evaluate_and_predict_read_an_s3_dataset(ray_local, s3_bucket, tmp_path):
    from alexnet.config import load_config
    from alexnet.serve.predict import evaluate, predict_dataset, read_images
    from alexnet.train.fit import check_inputs
    from pipelines.read.loader import read_shards, train_dataset, train_preset, val_dataset

    dest = f"{s3_bucket}/ds"
    ingest(_images(tmp_path / "src", n=12), dest, OPTS)
    info = open_dataset(dest)
    preset = train_preset(info, crop=64, resize=72, pca_lighting=0.1, flip=True)
    batch = train_dataset(info, preset, seed=1).take_batch(8)
    assert batch["image"].shape == (8, 3, 64, 64) and set(batch["label"]) <= {0, 1}
    assert val_dataset(info, crop=64, resize=72).count() == info.split_size("val")
    assert read_shards(info.shard_paths("train"), ["id", "label"]).count() == info.split_size("train")

    cfg = load_config("smoke", [f"data.path={dest}", "optim.batch_size=4"])
    assert check_inputs(cfg).path == dest  # `alexnet train --data s3://...` opens it like a local one

    model = _model(info)
    scores, labels, _ = evaluate(model, info)
    assert scores.images == info.split_size("val") == len(labels)
    preds = predict_dataset(read_images(dest, model, crop=64, resize=72), model, top_k=2).take_all()
    assert len(preds) == info.num_images and all(p["error"] == "" for p in preds)


@pytest.mark.fault("`alexnet train --data` naming an S3 prefix with no dataset", inputs=1,
                   outcome="exit 2, one line naming the URI, no traceback")
def test_train_cli_keeps_an_s3_data_uri(s3_bucket):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--data", f"{s3_bucket}/nothing-here",
                        "--recipe", "smoke"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"dataset directory {s3_bucket}/nothing-here does not exist" in r.stderr


@pytest.mark.fault("SIGKILL of an ingest into S3 mid-encode", inputs=1,
                   outcome="readers see the previous version (20 images); its lock refuses until stale; the "
                           "rerun completes all 800 images, no unlisted shard, no lock")
@pytest.mark.slow
def test_a_killed_ingest_on_s3_leaves_the_previous_version_and_its_lock_expires(ray_local, s3_bucket, tmp_path):
    src, dest = _images(tmp_path / "src", n=10, size=(160, 200)), f"{s3_bucket}/ds"
    before = ingest(src, dest, OPTS)
    _images(src, n=400, size=(160, 200))
    cmd = [sys.executable, "-m", "jobs.cli", "ingest", str(src), dest, "--resize", "72", "--val-fraction", "0.25",
           "--shard-mb", "1", "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not _unlisted(dest):
            time.sleep(0.1)
        assert proc.poll() is None, "ingest finished before it could be killed; make the dataset bigger"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    info = open_dataset(dest)  # readers see the previous version, whole
    assert info.version == before.version and info.num_images == 20 and _unlisted(dest)

    with pytest.raises(LockBusy, match=r"last heartbeat \d+ s ago"):  # its lock object outlives it...
        ingest(src, dest, OPTS)
    time.sleep(1.5)
    after = ingest(src, dest, OPTS, stale_lock_s=1.0)  # ...until it is stale (120 s by default)
    assert after.added == 780 and after.already_present == 20 and not _unlisted(dest)
    assert LOCK_FILE not in objects(dest) and open_dataset(dest).num_images == 800


@pytest.mark.fault("an ingest into a bucket that does not exist", inputs=1,
                   outcome="one line naming the URI")
def test_a_bucket_that_does_not_exist_is_one_line(s3_server, tmp_path):
    with pytest.raises(UserError, match=r"^s3://no-such-bucket-here/ds: cannot write there: ") as err:
        ingest(_images(tmp_path / "src", n=2), "s3://no-such-bucket-here/ds", OPTS)
    assert "\n" not in str(err.value)
