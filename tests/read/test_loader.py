"""The Ray Data pipelines on a real local Ray: shapes, seeded determinism per image id, per-epoch
reshuffling, and equal batch counts for two real Ray Train workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.dataset import open_dataset
from pipelines.read.device_augment import augment_on_device
from pipelines.read.loader import (MAX_BLOCKS, TASK_ROWS, StartEpoch, epoch_plan, stream_blocks, train_dataset,
                                   train_preset, train_sample, unit_order, val_dataset)


@pytest.fixture(scope="module")
def info(shapes_dataset):
    return open_dataset(shapes_dataset)


def _stream(info, *, crop: int, resize: int, pca_lighting: float = 0.1, flip: bool = True,
            random_resized_crop: bool = False, **kw):
    """train_dataset with the preset these augmentation settings make."""
    preset = train_preset(info, crop=crop, resize=resize, pca_lighting=pca_lighting, flip=flip,
                          random_resized_crop=random_resized_crop)
    return train_dataset(info, preset, **kw)


def _by_key(ds) -> dict:
    out = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out.update(zip(batch["key"].tolist(), batch["image"]))
    return out


def test_pipelines_shapes_and_dtypes(info):
    train = _stream(info, crop=48, resize=72, pca_lighting=0.1, flip=True, seed=0, epoch=0).take_batch(5)
    assert train["image"].shape == (5, 3, 48, 48) and train["image"].dtype == np.uint8
    assert train["label"].dtype == np.int64 and set(train) == {"image", "label"}
    assert 0 <= train["label"].min() and train["label"].max() < info.num_classes
    rrc = _stream(info, crop=40, resize=72, pca_lighting=0.1, flip=True, seed=0, random_resized_crop=True).take_batch(3)
    assert rrc["image"].shape == (3, 3, 40, 40)
    val = val_dataset(info, crop=48, resize=64).take_batch(4)
    assert val["image"].shape == (4, 3, 48, 48) and val["label"].dtype == np.int64
    ten = val_dataset(info, crop=48, resize=64, ten_crop=True, batch_rows=3).take_batch(4)
    assert ten["image"].shape == (4, 10, 3, 48, 48) and ten["image"].dtype == np.uint8


def test_seeded_pipeline_reproduces_per_image_across_runs_and_batchings(info):
    kw = dict(crop=48, resize=72, pca_lighting=0.1, flip=True, seed=5, keep_key=True)
    first = _by_key(_stream(info, epoch=1, batch_rows=64, **kw))
    again = _by_key(_stream(info, epoch=1, batch_rows=7, **kw))
    other_epoch = _by_key(_stream(info, epoch=2, batch_rows=64, **kw))
    assert len(first) == info.split_size("train") and first.keys() == again.keys() == other_epoch.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert sum(np.array_equal(first[k], other_epoch[k]) for k in first) == 0
    val_a = _by_key(val_dataset(info, crop=48, resize=64, keep_key=True))
    val_b = _by_key(val_dataset(info, crop=48, resize=64, keep_key=True, batch_rows=5))
    assert len(val_a) == info.split_size("val") and all(np.array_equal(val_a[k], val_b[k]) for k in val_a)


def test_the_reports_sample_is_made_in_process_exactly_as_the_stream_augments(info):
    kw = dict(crop=48, resize=72, pca_lighting=0.1, flip=True)
    streamed = list(_by_key(_stream(info, seed=5, keep_key=True, **kw)).values())
    sample = train_sample(info, train_preset(info, **kw), 6, seed=5)
    assert sample["image"].shape == (6, 3, 48, 48) and sample["image"].dtype == np.uint8
    assert all(any(np.array_equal(image, s) for s in streamed) for image in sample["image"])
    assert not np.array_equal(train_sample(info, train_preset(info, **kw), 6, seed=6)["image"], sample["image"])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not _cuda(), reason="no CUDA device (CI has none; the GPU machine runs this)"))])
@pytest.mark.parametrize("crop, rrc", [(48, False), (80, False), (40, True)])
@pytest.mark.parametrize("batch_format", ["pyarrow", "numpy"])
def test_decode_on_device_path_augments_each_image_like_the_cpu_path(info, crop, rrc, batch_format, device):
    """data.decode=gpu: Ray Data only plans, the train worker decodes and augments with torch (on
    the CPU device where there is no GPU, with nvJPEG on CUDA), from Ray Data's batches as Arrow
    tables (the worker's form) or numpy. Same crops, flips and lighting per image as the CPU path:
    on the CPU device the very same pixels (same decoders; the resample reproduces the CPU
    path's fixed-point resize), for the paper's crop (down- and upscaled: crop 80 > 72 px) and
    RandomResizedCrop. nvJPEG upsamples chroma differently from libjpeg (measured on an H100:
    mean |diff| 1.3-2.6, p99 16-33 at the shapes' hard edges), so on CUDA each image must instead
    be less than half as far from its own CPU augmentation as from that augmentation mirrored: a
    wrong crop or flip is not."""
    import torch

    kw = dict(crop=crop, resize=max(crop, 72), pca_lighting=0.1, flip=True, seed=3, epoch=1, keep_key=True,
              random_resized_crop=rrc)
    on_cpu = _by_key(_stream(info, **kw))
    preset = train_preset(info, crop=crop, resize=max(crop, 72), pca_lighting=0.1, flip=True, random_resized_crop=rrc)
    on_device = {}
    for batch in _stream(info, decode_on_device=True, **kw).iter_batches(batch_size=16, batch_format=batch_format):
        out = augment_on_device(batch, preset, torch.device(device))
        assert out["image"].dtype == torch.uint8 and out["label"].dtype == torch.int64
        assert out["image"].device.type == device
        keys = batch["key"].to_pylist() if batch_format == "pyarrow" else batch["key"].tolist()
        on_device.update(zip(keys, out["image"].cpu().numpy()))
    assert on_device.keys() == on_cpu.keys()
    diff = np.stack([np.abs(on_cpu[k].astype(int) - on_device[k].astype(int)) for k in on_cpu])
    print(f"{device} crop={crop} rrc={rrc}: mean |diff| {diff.mean():.3f}, p99 {np.percentile(diff, 99)}")
    if device == "cpu":
        assert diff.max() == 0
        return
    own = diff.reshape(len(diff), -1).mean(axis=1)
    mirrored = np.array([np.abs(on_cpu[k][..., ::-1].astype(int) - on_device[k].astype(int)).mean() for k in on_cpu])
    assert diff.mean() < 4 and (own * 2 < mirrored).mean() >= 0.9, (own, mirrored)


def test_unit_order_is_a_permutation_per_seed_and_epoch():
    orders = {(seed, epoch): unit_order(40, seed, epoch) for seed in (1, 2) for epoch in (0, 1)}
    assert all(sorted(o) == list(range(40)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 4
    assert unit_order(40, 1, 1) == orders[(1, 1)] and unit_order(5, None, 3) == [0, 1, 2, 3, 4]


def test_epoch_plan_cuts_each_epoch_to_its_share():
    units = [{"rows": r} for r in (10, 7, 10, 3)]
    full = epoch_plan(units, 5, 2, None)
    assert sorted(i for i, _ in full) == [0, 1, 2, 3] and sum(r for _, r in full) == 30
    cut = epoch_plan(units, 5, 2, 24)
    assert [i for i, _ in cut] == [i for i, _ in full] and sum(r for _, r in cut) == 24
    assert all(0 <= r <= units[i]["rows"] for i, r in cut)
    assert unit_order(4, 5, 3) != unit_order(4, 5, 2)  # with this seed the next epoch's order differs,
    assert epoch_plan(units, 5, 3, None) != full  # and so does its plan


def test_a_map_task_takes_consecutive_units_up_to_task_rows_keeping_four_tasks_per_cpu():
    units = [{"rows": 375}] * 16
    assert stream_blocks(units, 5, 2) == 16  # 5 units (1,875 images) a task, not 80 tasks of 375
    assert stream_blocks(units, 1, 2) == 8  # one epoch on 2 CPUs: still 4 tasks per CPU
    assert stream_blocks(units, 1, 16) == 16  # never fewer than one unit per task
    assert stream_blocks([{"rows": 22}] * 4, 3, 2) == 12  # tiny streams: one unit per task
    assert stream_blocks([{"rows": 1024}] * 1250, 90, 16) == MAX_BLOCKS
    assert stream_blocks([], 3, 2) == 1


@pytest.mark.parametrize("task_rows", [0, TASK_ROWS])
def test_one_stream_holds_every_epoch_in_its_seeded_order(info, ray_local, monkeypatch, task_rows):
    """With preserve_order (so that task timing cannot reorder the stream), a 2-epoch stream is
    epoch 0 then epoch 1, each in its own seeded unit order and covering the split; a stream that
    starts at epoch 1 (a resumed run) repeats the first stream's second epoch exactly. The same
    whether each map task takes one work unit or several (task_rows 0: one; on one CPU the
    default lets a task take several of this split's small units)."""
    from ray.data import DataContext

    from pipelines.read import loader

    monkeypatch.setattr(loader, "TASK_ROWS", task_rows)
    monkeypatch.setattr(loader, "_cluster_cpus", lambda: 1.0)
    units = loader._units(info.shard_paths("train"), 1.0, 4)
    assert (loader.stream_blocks(units, 2, 1.0) < 2 * len(units)) == (task_rows > 0)
    ctx = DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    n = info.split_size("train")
    try:
        def rows(first: int, epochs: int) -> list[tuple[int, int]]:
            start = StartEpoch.create()
            start.set(first)
            ds = _stream(info, crop=32, resize=72, pca_lighting=0.0, flip=False, seed=9, keep_key=True, start=start,
                               epochs=epochs, batch_rows=4)
            return [(e, k) for b in ds.iter_batches(batch_size=None) for e, k in zip(b["epoch"].tolist(), b["key"].tolist())]

        run = rows(0, 2)
        resumed = rows(1, 1)
    finally:
        ctx.execution_options.preserve_order = before
    assert [e for e, _ in run] == [0] * n + [1] * n
    first, second = [k for _, k in run[:n]], [k for _, k in run[n:]]
    assert sorted(first) == sorted(second) and first != second
    assert resumed == run[n:]


def test_per_epoch_keeps_that_many_images_of_each_epoch(info, ray_local):
    n = info.split_size("train")
    keep = n - 7
    ds = _stream(info, crop=32, resize=72, pca_lighting=0.0, flip=False, seed=2, keep_key=True, epochs=3,
                       per_epoch=keep)
    seen = [(e, k) for b in ds.iter_batches(batch_size=None) for e, k in zip(b["epoch"].tolist(), b["key"].tolist())]
    assert len(seen) == len(set(seen)) == 3 * keep
    dropped = [{k for e, k in seen if e == epoch} for epoch in range(3)]
    assert len({frozenset(d) for d in dropped}) > 1  # not always the same images left out


def test_start_epoch_round_trips_and_pickles(ray_local):
    import pickle

    start = StartEpoch.create()
    assert start.get() == 0
    start.set(4)
    assert pickle.loads(pickle.dumps(start)).get() == 4


@pytest.mark.slow
def test_train_workers_take_equal_batches_from_one_stream(info, tmp_path):
    """Two workers, the case with a split to get wrong; one worker's stream is every training
    run's (alexnet.train.loop refuses an epoch the stream cut short)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from alexnet.train.fit import steps_per_epoch

    def count_loop(config: dict) -> None:
        """Only counts, as alexnet.train.loop does: rank 0 sets the start epoch, everyone makes one
        iterator for the run and takes K batches of it per epoch. (Nested so that Ray pickles it
        by value: workers cannot import this test module.)"""
        import json
        from itertools import islice
        from pathlib import Path

        import ray.train
        import torch
        import torch.distributed as dist

        ctx = ray.train.get_context()
        if ctx.get_world_rank() == 0:
            config["start"].set(0)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        stream = iter(ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=config["batch"], drop_last=True, local_shuffle_buffer_size=16, local_shuffle_seed=1,
            dtypes={"image": torch.uint8, "label": torch.long, "key": torch.long, "epoch": torch.long}))
        for epoch in range(config["epochs"]):
            rows, batches = [], 0
            for batch in islice(stream, config["steps"]):
                batches += 1
                rows += zip(batch["epoch"].tolist(), batch["key"].tolist(),
                            batch["image"].flatten(1).sum(dim=1).tolist())
            # Written to a shared directory (one local node): Ray Train keeps only rank 0's metrics.
            report = {"batches": batches, "rows": rows}
            (Path(config["out"]) / f"{epoch}-{ctx.get_world_rank()}.json").write_text(json.dumps(report))
            ray.train.report({"epoch": epoch})
        assert next(stream, None) is None  # the stream held exactly the run's batches

    start = StartEpoch.create()
    workers, batch, epochs, n = 2, 8, 3, info.split_size("train")
    steps = steps_per_epoch(n, workers, batch)
    out = tmp_path / "reports"
    out.mkdir()
    ds = _stream(info, crop=32, resize=72, pca_lighting=0.1, flip=True, seed=1, start=start, keep_key=True,
                       epochs=epochs, per_epoch=steps * batch * workers)
    TorchTrainer(count_loop, train_loop_config={"start": start, "batch": batch, "epochs": epochs, "steps": steps,
                                                "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.25}),
                 run_config=RunConfig(name=f"count-{workers}", storage_path=str(tmp_path / "runs")),
                 datasets={"train": ds}).fit()

    rows = []
    for epoch in range(epochs):
        reports = [json.loads((out / f"{epoch}-{r}.json").read_text()) for r in range(workers)]
        assert [r["batches"] for r in reports] == [steps] * workers
        taken = [tuple(row) for r in reports for row in r["rows"]]
        assert len(taken) == steps * batch * workers
        # Mostly this epoch's own images: only the boundary (rows in flight, the shuffle buffer) mixes.
        assert sum(e == epoch for e, _, _ in taken) >= len(taken) - workers * (16 + 2 * batch)
        rows += taken
    pairs = [(e, k) for e, k, _ in rows]
    assert len(pairs) == len(set(pairs))  # no image twice in one epoch of the stream
    for epoch in range(epochs):
        keys = [k for e, k in pairs if e == epoch]
        assert len(keys) == steps * batch * workers and n - len(keys) < workers * (batch + 1)
    # Augmentation follows each row's epoch: the same pipeline pinned to epoch 1 gives its pixels.
    pinned = _by_key(_stream(info, crop=32, resize=72, pca_lighting=0.1, flip=True, seed=1, epoch=1, keep_key=True))
    assert all(int(pinned[k].astype(np.int64).sum()) == s for e, k, s in rows if e == 1)


@pytest.mark.fault("a listed shard that is not Parquet", inputs=1,
                   outcome="UserError naming the shard before any Ray task runs")
def test_an_unreadable_shard_is_named_before_any_task_runs(info, tmp_path):
    import dataclasses

    from pipelines.errors import UserError

    bad = tmp_path / "part-bad.parquet"
    bad.write_bytes(b"not parquet at all")
    broken = dataclasses.replace(info, shards={**info.shards, "train": [*info.shards["train"], str(bad)]})
    with pytest.raises(UserError, match="part-bad.parquet: not a readable Parquet shard"):
        _stream(broken, crop=32, resize=72, pca_lighting=0.0, flip=False, seed=1)


def test_the_train_loop_takes_every_epoch_from_one_execution_of_the_stream(info):
    """Each epoch's K batches come from one iterator: Ray Data's iter_torch_batches is an iterable
    whose every iter() starts the stream again at its first epoch (the same crops every epoch)."""
    from itertools import islice

    import torch

    from alexnet.train.loop import run_stream

    steps, batch = 3, 8
    ds = _stream(info, crop=32, resize=72, pca_lighting=0.1, flip=True, seed=1, epochs=2, per_epoch=steps * batch,
                       keep_key=True)
    ds = ds.map_batches(lambda b: {"image": b["image"], "label": b["epoch"]})  # each row's epoch, as its label
    stream = run_stream(ds.iterator(), None, torch.device("cpu"), batch_size=batch, shuffle_buffer=None, shuffle_seed=0)
    first, second = ([int(e) for b in islice(stream, steps) for e in b["label"]] for _ in range(2))
    assert len(first) == len(second) == steps * batch
    assert first.count(0) > len(first) // 2 and second.count(1) > len(second) // 2
    assert next(stream, None) is None  # the stream held exactly the run's batches


def test_the_train_worker_reads_a_planned_stream_through_its_device_feeder(info):
    """data.decode=gpu in the train loop: the shard's Arrow batches go through a DeviceFeeder
    (here on the CPU device) and come out as the CPU path's pixels, batch after batch."""
    import torch

    from alexnet.train import loop as train_loop_module
    from alexnet.train.device_input import DeviceFeeder

    # Whole batches only: both streams hold the same rows (drop_last drops nothing).
    kw = dict(crop=48, resize=72, pca_lighting=0.1, flip=True, seed=5, epoch=0, per_epoch=info.split_size("train") // 8 * 8)
    preset = train_preset(info, crop=48, resize=72, pca_lighting=0.1, flip=True, random_resized_crop=False)
    cpu = torch.device("cpu")
    host = train_loop_module._host_batches(_stream(info, decode_on_device=True, **kw).iterator(), True, cpu,
                                batch_size=8, shuffle_buffer=None, shuffle_seed=0)
    expected = train_loop_module._host_batches(_stream(info, **kw).iterator(), False, cpu,
                                    batch_size=8, shuffle_buffer=None, shuffle_seed=0)
    stream = train_loop_module._device_input(host, preset, cpu)
    assert isinstance(stream, DeviceFeeder)
    try:
        got = {(int(lab), img.numpy().tobytes()) for b in stream for lab, img in zip(b["label"], b["image"])}
    finally:
        stream.close()
    want = {(int(lab), img.numpy().tobytes()) for b in expected for lab, img in zip(b["label"], b["image"])}
    assert len(got) >= 8 and got == want
    assert train_loop_module._device_input(expected, None, cpu) is expected  # the CPU path passes through
