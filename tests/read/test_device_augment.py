"""The batched device path (pipelines.read.device_augment) against the CPU path, on real JPEG, PNG and
raw bytes of mixed sizes: no Ray here (tests/read/test_loader.py feeds it from a real Ray Data pipeline).
On the CPU device the pixels must be the CPU path's exactly; on CUDA (the GPU machine) nvJPEG's
chroma differs from libjpeg's, so there each image must be much closer to its own CPU
augmentation than to that augmentation mirrored."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipelines.read import device_augment
from pipelines.read.augment import TrainPreset
from pipelines.decode import ImageDecodeError
from pipelines.read.device_augment import augment_on_device, plan_batch
from alexnet.demo import CLASSES, render

EIGVAL = (0.2, 0.1, 0.05)
EIGVEC = ((0.58, 0.7, -0.4), (0.58, 0.0, 0.8), (0.58, -0.7, -0.4))
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (CI has none; the GPU machine runs this)"))]


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def _rows(sizes, formats=None, seed: int = 0) -> dict:
    """Stored rows (as the loader reads them) of rendered images of the given (height, width)."""
    rng = np.random.default_rng(seed)
    formats = formats or ["jpeg"] * len(sizes)
    images, heights, widths = [], [], []
    for i, ((h, w), fmt) in enumerate(zip(sizes, formats)):
        img = render(CLASSES[i % len(CLASSES)], (w, h), rng)
        images.append(img.tobytes() if fmt == "raw" else _encode(img, fmt.upper()))
        heights.append(h)
        widths.append(w)
    ids = [hashlib.sha256(b + bytes([i])).hexdigest() for i, b in enumerate(images)]
    return {"id": np.array(ids, dtype=object), "image": np.array(images, dtype=object),
            "label": np.arange(len(images), dtype=np.int64) % 6,
            "height": np.array(heights, dtype=np.int32), "width": np.array(widths, dtype=np.int32)}


def _mixed_sizes(n: int, lo: int, hi: int, seed: int = 1) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(lo, hi + 1, size=2)) for _ in range(n)]


def _preset(crop: int, resize: int, rrc: bool, pca: float = 0.1) -> TrainPreset:
    return TrainPreset(crop=crop, resize=resize, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=pca, flip=True,
                       random_resized_crop=rrc)


def _assert_like_cpu_path(device_images: np.ndarray, cpu_images: np.ndarray, device: str) -> None:
    assert device_images.shape == cpu_images.shape and device_images.dtype == np.uint8
    if device == "cpu":
        differ = np.flatnonzero((device_images != cpu_images).reshape(len(cpu_images), -1).any(axis=1))
        assert len(differ) == 0, f"images {differ.tolist()} differ from the CPU path"
        return
    diff = np.abs(device_images.astype(int) - cpu_images.astype(int))
    own = diff.reshape(len(diff), -1).mean(axis=1)
    mirrored = np.abs(device_images.astype(int) - cpu_images[..., ::-1].astype(int)).reshape(len(diff), -1).mean(axis=1)
    print(f"cuda: mean |diff| {diff.mean():.3f}, p99 {np.percentile(diff, 99)}, max {diff.max()}")
    assert diff.mean() < 4 and (own * 2 < mirrored).mean() >= 0.9, (own, mirrored)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crop, resize, rrc", [(48, 64, False), (64, 80, False), (32, 40, True), (64, 80, True),
                                               (33, 150, True)])
def test_device_path_equals_the_cpu_path_on_mixed_sizes(crop, resize, rrc, device):
    """Paper crop (down- and upscaled images), RandomResizedCrop (boxes down to 8% of the image,
    downscaled up to ~9x); flips and lighting on. Stored sizes stay under 2 x resize, where the CPU
    path would decode at a reduced DCT scale instead (the device path always decodes full size)."""
    batch = _rows(_mixed_sizes(24, 33, min(300, 2 * resize - 1)))
    preset = _preset(crop, resize, rrc)
    cpu = preset(batch, seed=4, epoch=2)
    planned = plan_batch(batch, preset=preset, seed=4, epoch=2)
    assert planned["plan"][:, 6].min() == 0 and planned["plan"][:, 6].max() == 1  # both flips present
    out = augment_on_device(planned, preset, device)
    assert out["image"].device.type == device and out["label"].dtype == torch.int64
    assert out["label"].tolist() == batch["label"].tolist()
    _assert_like_cpu_path(out["image"].cpu().numpy(), cpu["image"], device)


def _arrow(planned: dict, *, large: bool = False, chunks: int = 1) -> pa.Table:
    """The planned rows as an Arrow table, as iter_batches(batch_format="pyarrow") hands it over:
    the plan as a list per row, and (with chunks > 1) columns in several chunks."""
    kind = pa.large_binary() if large else pa.binary()
    columns = {"image": pa.array(list(planned["image"]), type=kind), "label": pa.array(planned["label"]),
               "plan": pa.array(list(planned["plan"]), type=pa.list_(pa.float32())),
               "height": pa.array(planned["height"]), "width": pa.array(planned["width"])}
    table = pa.table(columns)
    if chunks > 1:
        step = -(-table.num_rows // chunks)
        table = pa.concat_tables([table.slice(i, step) for i in range(0, table.num_rows, step)])
    return table


@pytest.mark.parametrize("large, chunks", [(False, 1), (True, 3)])
def test_arrow_batches_give_the_numpy_batches_pixels(large, chunks):
    """An Arrow batch is read in place (binary or large_binary, several chunks, a sliced table
    whose arrays start at an offset): the same pixels and labels as the numpy form of those rows."""
    batch = _rows(_mixed_sizes(20, 40, 120))
    preset = _preset(40, 64, rrc=True)
    planned = plan_batch(batch, preset=preset, seed=1)
    table = _arrow(planned, large=large, chunks=chunks).slice(3, 14)
    assert table.column("image").chunk(0).offset == 3
    rows = {k: v[3:17] for k, v in planned.items()}
    from_numpy = augment_on_device(rows, preset, "cpu")
    from_arrow = augment_on_device(table, preset, "cpu")
    assert torch.equal(from_arrow["image"], from_numpy["image"])
    assert from_arrow["label"].tolist() == rows["label"].tolist()


def test_png_and_raw_rows_are_decoded_on_the_host_among_jpegs():
    sizes = _mixed_sizes(9, 50, 100)
    batch = _rows(sizes, formats=["jpeg", "png", "raw"] * 3)
    preset = _preset(40, 56, rrc=False)
    expected = preset(batch, seed=2)["image"]
    out = augment_on_device(plan_batch(batch, preset=preset, seed=2), preset, "cpu")
    _assert_like_cpu_path(out["image"].numpy(), expected, "cpu")


def test_a_huge_image_is_resampled_in_its_own_chunk(monkeypatch):
    """A batch whose canvas would exceed CANVAS_PIXELS is resampled in chunks of similar window
    sizes, the huge image's window alone: the same pixels, in row order. (The budget is scaled
    down with the image, so that the test stays small.)"""
    monkeypatch.setattr(device_augment, "CANVAS_PIXELS", 600 * 800)
    sizes = _mixed_sizes(12, 40, 90)
    sizes[5] = (600, 800)  # its RandomResizedCrop window is >= 8% of it: 13 of them exceed the budget
    batch = _rows(sizes)
    preset = _preset(48, 64, rrc=True)
    planned = plan_batch(batch, preset=preset, seed=7)
    _, axes = device_augment._parameters(planned["plan"].astype(np.float64), planned["label"],
                                         np.asarray(sizes)[:, 0], np.asarray(sizes)[:, 1], preset)
    tall, wide = axes[0, :, device_augment._SIZE], axes[1, :, device_augment._SIZE]
    chunks = device_augment._chunks(tall, wide)
    assert chunks is not None and [c.tolist() for c in chunks][-1] == [5]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(sizes)))
    assert all(len(c) * tall[c].max() * wide[c].max() <= device_augment.CANVAS_PIXELS for c in chunks)
    out = augment_on_device(planned, preset, "cpu")
    _assert_like_cpu_path(out["image"].numpy(), preset(batch, seed=7)["image"], "cpu")


def test_small_canvas_budget_chunks_every_batch_the_same(monkeypatch):
    batch = _rows(_mixed_sizes(16, 40, 120))
    preset = _preset(32, 48, rrc=False)
    planned = plan_batch(batch, preset=preset, seed=3)
    whole = augment_on_device(planned, preset, "cpu")["image"]
    monkeypatch.setattr(device_augment, "CANVAS_PIXELS", 3 * 60 * 60)
    chunked = augment_on_device(planned, preset, "cpu")["image"]
    assert torch.equal(whole, chunked)


def test_meta_device_runs_the_host_side_only():
    batch = _rows(_mixed_sizes(8, 40, 90))
    preset = _preset(32, 48, rrc=True)
    out = augment_on_device(plan_batch(batch, preset=preset, seed=0), preset, "meta")
    assert out["image"].device.type == "meta" and out["image"].shape == (8, 3, 32, 32)
    assert out["image"].dtype == torch.uint8 and out["label"].shape == (8,)


@pytest.mark.fault("a 9000 x 9000 row in a batch for the device path", inputs=1,
                   outcome="ImageDecodeError naming the row, before decoding")
def test_an_image_over_the_pixel_limit_is_refused_before_decoding():
    batch = _rows([(60, 60), (60, 60)])
    preset = _preset(32, 48, rrc=False)
    planned = plan_batch(batch, preset=preset, seed=0)
    planned["height"] = np.array([60, 9000], dtype=np.int32)
    planned["width"] = np.array([60, 9000], dtype=np.int32)
    with pytest.raises(ImageDecodeError, match="too large: row 1 of the batch is 9000x9000"):
        augment_on_device(planned, preset, "cpu")


def test_an_empty_batch_gives_empty_tensors():
    preset = _preset(32, 48, rrc=False)
    planned = plan_batch(_rows([]), preset=preset, seed=0)
    out = augment_on_device(planned, preset, "cpu")
    assert out["image"].shape == (0, 3, 32, 32) and out["label"].shape == (0,)


def test_float16_products_as_on_cuda_stay_within_two_levels(monkeypatch):
    """On CUDA the resample's products run in float16 (weights to 11 bits): run that arithmetic
    here (same decoder) to bound its own share of the CUDA path's difference from the CPU path."""
    batch = _rows(_mixed_sizes(24, 40, 150))
    preset = _preset(64, 80, rrc=True)
    expected = preset(batch, seed=5)["image"].astype(int)
    monkeypatch.setattr(device_augment, "_compute_dtype", lambda device: torch.float16)
    got = augment_on_device(plan_batch(batch, preset=preset, seed=5), preset, "cpu")["image"].numpy().astype(int)
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and diff.mean() < 0.2, (diff.max(), diff.mean())
