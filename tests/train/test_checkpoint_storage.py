"""Checkpoints on object storage and the shared-storage rule for clusters of several nodes.

The S3 server is moto's standalone server on loopback (conftest.s3_server), reached only
through AWS_ENDPOINT_URL; the two-node end-to-end run is tests/train/test_two_nodes.py."""

from __future__ import annotations

import os
import threading

import pyarrow.fs
import pytest
import torch

from alexnet.train import checkpoint
from alexnet.config import load_config
from pipelines.shared_folder import Mount, mount_of, node_mount, parse_mountinfo, refusal
from alexnet.train.fit import resume_point
from pipelines.errors import UserError


def _save(folder, epoch: int, arch: str = "torchvision") -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    folder.mkdir(parents=True)
    checkpoint.save(folder, model=net, optimizer=torch.optim.AdamW(net.parameters()), plateau={}, epoch=epoch,
                    config={"model": {"arch": arch, "hidden": 256}, "optim": {"optimizer": "adamw"}},
                    dataset_version="v1", metrics={"val_top1": 0.5}, num_classes=3)


def _upload(local, uri: str) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    pyarrow.fs.copy_files(str(local), path, destination_filesystem=fs)


def _save_to(uri: str, epoch: int, tmp_path) -> None:
    """A checkpoint of `epoch` saved locally, then uploaded whole to `uri`."""
    _save(tmp_path / f"local-{epoch}", epoch)
    _upload(tmp_path / f"local-{epoch}", uri)


@pytest.mark.fault("a checkpoint on S3 whose upload was cut off (state.pt shorter than meta.json "
                   "says); a missing one", inputs=2,
                   outcome="the last complete checkpoint is found and loads; the missing one is named")
def test_checkpoints_on_s3_are_found_read_and_loaded_where_they_are(s3_bucket, tmp_path):
    runs = f"{s3_bucket}/runs"
    _save_to(f"{runs}/r/checkpoint_000000", 0, tmp_path)
    _save(tmp_path / "c1", 1)  # its upload cut off by a kill: state.pt shorter than meta.json says
    fs, path = pyarrow.fs.FileSystem.from_uri(f"{runs}/r/checkpoint_000001")
    fs.create_dir(path)
    with fs.open_output_stream(f"{path}/{checkpoint.META_FILE}") as out:
        out.write((tmp_path / "c1" / checkpoint.META_FILE).read_bytes())
    with fs.open_output_stream(f"{path}/{checkpoint.STATE_FILE}") as out:
        out.write((tmp_path / "c1" / checkpoint.STATE_FILE).read_bytes()[:100])

    latest = checkpoint.find_latest(runs, "r")
    assert latest == (f"{runs}/r/checkpoint_000000", 0)
    assert checkpoint.read_meta(latest[0])["epoch"] == 0
    state = checkpoint.load(latest[0])  # the post-training step's read: a URI, not a local path
    assert state["epoch"] == 0 and state["config"]["model"]["hidden"] == 256
    with pytest.raises(FileNotFoundError, match=rf"{runs}/r/checkpoint_000009/state.pt: no checkpoint state file"):
        checkpoint.load(f"{runs}/r/checkpoint_000009")
    assert checkpoint.find_latest(runs, "no-such-run") is None

    # Ray Train names a checkpoint by its path on the bucket's filesystem; readers get the URI back.
    assert checkpoint.uri_of(runs, f"{s3_bucket[5:]}/runs/r/checkpoint_000000") == latest[0]
    assert checkpoint.uri_of(str(tmp_path), str(tmp_path / "c1")) == str(tmp_path / "c1")


@pytest.mark.slow
@pytest.mark.fault("S3 failing while a rerun looks for its checkpoints: for a moment, then for good", inputs=2,
                   outcome="a short outage is read through; a lasting one is one UserError naming the store, "
                           "never 'no checkpoint' (which would restart at epoch 0)")
def test_a_store_that_fails_is_not_read_as_no_checkpoint(s3_bucket, tmp_path, monkeypatch):
    from pipelines import storage
    from tests.support.netfault import FaultyProxy

    runs = f"{s3_bucket}/runs"
    _save_to(f"{runs}/r/checkpoint_000000", 0, tmp_path)
    proxy = FaultyProxy(os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(checkpoint, "READ_RETRY_WAITS_S", (1.0, 1.0), raising=False)
    storage._filesystem.cache_clear()  # a client for the proxy's endpoint
    try:
        proxy.cut()
        threading.Timer(1.5, proxy.restore).start()  # back within the retries
        assert checkpoint.find_latest(runs, "r") == (f"{runs}/r/checkpoint_000000", 0)
        proxy.cut()
        with pytest.raises(UserError, match=rf"cannot read the checkpoints at {runs}/r .*3 tries"):
            checkpoint.find_latest(runs, "r")
    finally:
        proxy.close()
        storage._filesystem.cache_clear()


@pytest.mark.fault("--resume-from an S3 checkpoint of another shape (num_classes); a path with no "
                   "checkpoint", inputs=2,
                   outcome="one UserError each naming the checkpoint and the mismatch or --resume-from")
def test_resume_from_an_s3_checkpoint_reads_its_meta_and_refuses_another_shape(s3_bucket, tmp_path):
    runs = f"{s3_bucket}/runs"
    _save_to(f"{runs}/old/checkpoint_000004", 4, tmp_path)
    cfg = load_config("smoke", ["optim.optimizer=adamw"])
    assert resume_point(cfg, runs, "new", f"{runs}/old/checkpoint_000004", num_classes=3) == (
        f"{runs}/old/checkpoint_000004", 4)
    with pytest.raises(UserError, match=r"cannot resume from s3://.*/old/checkpoint_000004: num_classes: checkpoint 3"):
        resume_point(cfg, runs, "new", f"{runs}/old/checkpoint_000004", num_classes=5)
    with pytest.raises(UserError, match=r"^--resume-from s3://.*/old/nothing: not a readable checkpoint"):
        resume_point(cfg, runs, "new", f"{runs}/old/nothing", num_classes=3)


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
61 27 0:52 / /mnt/shared rw,relatime shared:30 - nfs4 fs-1234.efs.us-west-2.amazonaws.com:/ rw,vers=4.1
62 61 0:53 /exports/runs /mnt/shared/my\\040runs rw - nfs4 10.0.0.5:/srv rw
"""


@pytest.mark.fault("a checkpoint uploaded but never registered with Ray (its driver or worker killed in between)",
                   inputs=1, outcome="the restarted workers start after the stored one, where the driver planned the"
                                     " run's stream, not after Ray's older one")
def test_workers_start_from_the_later_of_rays_checkpoint_and_the_stored_one(s3_bucket, tmp_path):
    from ray.train import Checkpoint

    from alexnet.train.loop import start_checkpoint

    runs = f"{s3_bucket}/runs"
    _save_to(f"{runs}/X/checkpoint_a", 0, tmp_path)
    _save_to(f"{runs}/X/checkpoint_b", 1, tmp_path)
    fs, path = pyarrow.fs.FileSystem.from_uri(f"{runs}/X/checkpoint_a")
    registered = Checkpoint(path, filesystem=fs)  # Ray registered epoch 0 only; epoch 1 is stored after it
    found, own = start_checkpoint(registered, runs, "X", None)
    assert found.path.endswith("checkpoint_b") and own
    newer = Checkpoint(pyarrow.fs.FileSystem.from_uri(f"{runs}/X/checkpoint_b")[1], filesystem=fs)
    assert start_checkpoint(newer, runs, "X", None)[0] is newer  # Ray's, when it is the latest
    assert start_checkpoint(None, runs, "other", None) == (None, True)  # a fresh run
    other, own = start_checkpoint(None, runs, "other", f"{runs}/X/checkpoint_a")  # --resume-from
    assert other.path.endswith("checkpoint_a") and not own


def test_mountinfo_is_parsed_and_the_longest_mount_point_holds_a_path():
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.point for m in mounts] == ["/proc", "/", "/mnt/shared", "/mnt/shared/my runs"]
    assert mount_of("/mnt/shared/runs/x", mounts).source == "fs-1234.efs.us-west-2.amazonaws.com:/"
    assert mount_of("/mnt/shared/my runs/a", mounts) == Mount("nfs4", "10.0.0.5:/srv", "/exports/runs", "/mnt/shared/my runs")
    assert mount_of("/mnt/sharedness", mounts).fstype == "ext4"
    assert mount_of("/", mounts).point == "/"
    here = node_mount("/proc/self/no/such/folder")  # this machine's own answer, from the nearest existing folder
    assert here is not None and here.point == "/proc"


@pytest.mark.fault("--storage on each node's own disk, on an unknown filesystem, on different "
                   "network filesystems, with several nodes", inputs=3,
                   outcome="one line each naming the nodes' filesystems and the fix; the same network "
                           "filesystem everywhere is accepted")
def test_a_local_path_is_refused_on_several_nodes_unless_every_node_mounts_the_same_network_filesystem():
    efs = Mount("nfs4", "fs-1234.efs.us-west-2.amazonaws.com:/", "/", "/mnt/shared")
    disk = Mount("ext4", "/dev/vda", "/", "/")
    assert refusal("/mnt/shared/runs", {"a": efs}) is None  # one node: its own disk is every node's
    assert refusal("/mnt/shared/runs", {"a": efs, "b": efs}) is None

    message = refusal("/work/runs", {"a": disk, "b": disk})
    assert message.startswith("--storage /work/runs is a folder on each node's own disk (node a: ext4 /dev/vda at /)")
    assert "cluster has 2 nodes" in message and "--storage s3://BUCKET/PREFIX" in message and "\n" not in message
    assert "node b: a filesystem it could not tell" in refusal("/mnt/shared/runs", {"a": efs, "b": None})
    other = Mount("nfs4", "10.0.0.5:/srv", "/", "/mnt/shared")
    assert refusal("/mnt/shared/runs", {"a": efs, "b": other}).startswith(
        "--storage /mnt/shared/runs is not the same filesystem on every node (node a: nfs4 fs-1234")


@pytest.mark.slow
def test_fit_resumes_from_an_s3_checkpoint_saves_to_s3_and_the_servable_model_is_read_back(shapes_dataset, s3_bucket,
                                                                                          tmp_path):
    """`--resume-from s3://...` with `--storage s3://...` on a real local Ray: the workers load the
    checkpoint from the bucket, write theirs there, and the post-training step reads them back."""
    from mlflow.tracking import MlflowClient

    from alexnet import build_model
    from alexnet.serve.model_files import from_training_state
    from alexnet.train.fit import check_inputs, fit, resume_point
    from alexnet.train.loop import make_optimizer
    from pipelines.read.loader import train_preset

    cfg = load_config("smoke", [f"data.path={shapes_dataset}", "optim.batch_size=16", "optim.epochs=2"])
    info = check_inputs(cfg)
    net = build_model(cfg.model.arch, info.num_classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden)
    local = tmp_path / "epoch0"
    local.mkdir()
    checkpoint.save(local, model=net, optimizer=make_optimizer(net.parameters(), cfg, cfg.optim.lr), plateau={},
                    epoch=0, config=cfg.to_dict(), dataset_version=info.version, metrics={"val_top1": 0.0},
                    num_classes=info.num_classes)
    _upload(local, f"{s3_bucket}/elsewhere/checkpoint_000000")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    resume = resume_point(cfg, f"{s3_bucket}/runs", "from-s3", f"{s3_bucket}/elsewhere/checkpoint_000000",
                          num_classes=info.num_classes)
    out = fit(cfg, info, train_preset(info, **cfg.data.augmentation), run_name="from-s3", storage=f"{s3_bucket}/runs",
              tracking_uri=uri, run_id=run_id, resume=resume)
    assert (out.resumed_from_epoch, out.epochs) == (0, 2)
    assert out.best_checkpoint.startswith(f"{s3_bucket}/runs/from-s3/checkpoint_")
    assert checkpoint.find_latest(f"{s3_bucket}/runs", "from-s3") == (out.latest_checkpoint, 1)
    classifier = from_training_state(checkpoint.load(out.best_checkpoint), info)
    assert classifier(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, info.num_classes)
    assert [m.step for m in client.get_metric_history(run_id, "val/top1")] == [1]  # epoch 0 was the checkpoint's
