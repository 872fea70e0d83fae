"""Pure unit tests of the augmentation presets: no Ray, real JPEG/PNG/raw bytes."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pytest
from PIL import Image

from pipelines import augment
from pipelines.augment import TrainPreset, ValPreset, apply_preset, decode, image_key

EIGVAL = (0.2, 0.0, 0.0)  # one lighting direction only, so its effect is easy to predict
EIGVEC = ((0.58, 0.7, -0.4), (0.58, 0.0, 0.8), (0.58, -0.7, -0.4))  # columns; the first is ~grey


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _pixels(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _batch(images: list[bytes], labels=None) -> dict:
    ids = [hashlib.sha256(b).hexdigest() for b in images]
    labels = list(range(len(images))) if labels is None else labels
    return {"id": np.array(ids, dtype=object), "image": np.array(images, dtype=object),
            "label": np.array(labels, dtype=np.int32)}


def _windows(pixels: np.ndarray, crop: int) -> dict:
    """Every crop x crop window of an HWC image, as CHW bytes -> (x, y)."""
    h, w, _ = pixels.shape
    return {pixels[y:y + crop, x:x + crop].transpose(2, 0, 1).tobytes(): (x, y)
            for y in range(h - crop + 1) for x in range(w - crop + 1)}


def test_train_preset_crops_windows_flips_and_keeps_labels():
    sources = [_pixels(i) for i in range(12)]
    batch = _batch([_png(p) for p in sources], labels=[5] * 12)
    out = TrainPreset(crop=32, eigval=EIGVAL, eigvec=EIGVEC, pca_std=0.0, flip=True)(batch, seed=0)
    assert out["image"].shape == (12, 3, 32, 32) and out["image"].dtype == np.uint8
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [5] * 12
    flipped = positions = 0
    for img, src in zip(out["image"], sources):
        windows = _windows(src, 32)
        if img.tobytes() in windows:
            positions += windows[img.tobytes()] != (0, 0)
        else:  # not a plain window: must be a mirrored one
            assert img[:, :, ::-1].tobytes() in windows
            flipped += 1
    assert 0 < flipped < 12 and positions > 0


def test_train_preset_upscales_images_smaller_than_the_crop():
    out = TrainPreset(crop=64, eigval=EIGVAL, eigvec=EIGVEC)(_batch([_jpeg(_pixels(1, 40, 50))]), seed=1)
    assert out["image"].shape == (1, 3, 64, 64)


def test_pca_lighting_shifts_colour_along_the_eigenvector():
    grey = np.full((40, 40, 3), 128, dtype=np.uint8)
    batch = _batch([_png(grey) for _ in range(1)] * 1)
    shifts = []
    for epoch in range(8):
        out = TrainPreset(crop=32, eigval=EIGVAL, eigvec=EIGVEC, pca_std=0.1, flip=False)(batch, seed=3, epoch=epoch)
        shifts.append(out["image"][0].reshape(3, -1).mean(axis=1) - 128.0)
    direction = np.array([row[0] for row in EIGVEC])
    direction /= np.linalg.norm(direction)
    moved = [s for s in shifts if np.linalg.norm(s) > 1.0]
    assert len(moved) >= 4  # alpha ~ N(0, 0.1) x 0.2 x 255: a few levels per epoch
    for s in moved:
        assert abs(s @ direction) / np.linalg.norm(s) > 0.98  # parallel to the eigenvector


def test_flip_and_lighting_store_saturates_like_a_clipped_float_shift():
    src = np.random.default_rng(0).integers(0, 256, size=(3, 7, 9), dtype=np.uint8)
    src[:, 0, :3] = [0, 255, 128]  # the extremes, in every channel
    for flip in (False, True):
        for shift in (np.array([300.0, -0.4, 2.6]), np.array([-7.5001, 0.0, -300.0]), np.array([0.49, 254.6, -254.6])):
            out = np.empty_like(src)
            augment.store_flipped_lit(src, out, flip, shift)
            mirrored = src[:, :, ::-1] if flip else src
            expected = np.clip(np.rint(mirrored.astype(np.float64) + shift[:, None, None]), 0, 255)
            assert np.array_equal(out, expected.astype(np.uint8)), (flip, shift)


def test_decode_array_gives_pils_pixels_and_pils_errors():
    src = _pixels(5, 33, 47)
    for data in (_jpeg(src), _png(src)):
        arr = augment.decode_array(data)
        assert arr.shape == (3, 33, 47) and np.array_equal(arr, np.asarray(decode(data)).transpose(2, 0, 1))
    grey = io.BytesIO()
    Image.fromarray(src[:, :, 0]).save(grey, format="JPEG")
    assert augment.decode_array(grey.getvalue()).shape == (3, 33, 47)
    with pytest.raises(OSError):
        augment.decode_array(_jpeg(src)[:40])  # truncated inside the header: PIL's error


def test_random_resized_crop_shape_range_and_variety():
    batch = _batch([_jpeg(_pixels(i, 60, 90)) for i in range(6)])
    preset = TrainPreset(crop=40, eigval=EIGVAL, eigvec=EIGVEC, random_resized_crop=True)
    a, b = preset(batch, seed=7, epoch=0), preset(batch, seed=7, epoch=1)
    assert a["image"].shape == (6, 3, 40, 40) and a["image"].dtype == np.uint8
    assert not np.array_equal(a["image"], b["image"])
    for box in (preset.crop_box(90, 60, np.random.default_rng(s)) for s in range(50)):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60


def test_seeded_train_augmentation_ignores_batch_boundaries_and_order():
    images = [_jpeg(_pixels(i)) for i in range(9)]
    preset = TrainPreset(crop=32, eigval=EIGVAL, eigvec=EIGVEC)
    whole = preset(_batch(images), seed=11, epoch=2)
    by_key = dict(zip(whole["key"].tolist(), whole["image"]))
    reversed_parts = [preset(_batch(images[5:][::-1]), seed=11, epoch=2), preset(_batch(images[:5]), seed=11, epoch=2)]
    for part in reversed_parts:
        for key, img in zip(part["key"].tolist(), part["image"]):
            assert np.array_equal(by_key[key], img)
    other_epoch = preset(_batch(images), seed=11, epoch=3)
    other_seed = preset(_batch(images), seed=12, epoch=2)
    assert sum(np.array_equal(a, b) for a, b in zip(whole["image"], other_epoch["image"])) == 0
    assert sum(np.array_equal(a, b) for a, b in zip(whole["image"], other_seed["image"])) == 0


def test_unseeded_train_augmentation_varies():
    batch = _batch([_jpeg(_pixels(i)) for i in range(4)])
    preset = TrainPreset(crop=32, eigval=EIGVAL, eigvec=EIGVEC)
    assert not np.array_equal(preset(batch, seed=None)["image"], preset(batch, seed=None)["image"])


def test_val_preset_is_a_deterministic_centre_crop():
    src = _pixels(4, 48, 64)
    batch = _batch([_png(src)], labels=[3])
    preset = ValPreset(crop=32, resize=48)  # no resize needed: shorter side is already 48
    a, b = preset(batch), preset(batch)
    assert a["image"].shape == (1, 3, 32, 32) and a["label"].tolist() == [3]
    assert np.array_equal(a["image"], b["image"])
    assert np.array_equal(a["image"][0], src[8:40, 16:48].transpose(2, 0, 1))
    resized = ValPreset(crop=32, resize=40)(_batch([_jpeg(_pixels(4, 96, 128))]))
    assert resized["image"].shape == (1, 3, 32, 32)


def test_ten_crop_is_corners_centre_and_their_mirrors():
    src = _pixels(5, 48, 64)
    out = ValPreset(crop=32, resize=48, ten_crop=True)(_batch([_png(src)]))
    crops = out["image"][0]
    assert out["image"].shape == (1, 10, 3, 32, 32) and out["image"].dtype == np.uint8
    chw = src.transpose(2, 0, 1)
    assert np.array_equal(crops[0], chw[:, :32, :32])  # top left
    assert np.array_equal(crops[3], chw[:, 16:, 32:])  # bottom right
    assert np.array_equal(crops[4], ValPreset(crop=32, resize=48)(_batch([_png(src)]))["image"][0])
    assert np.array_equal(crops[5], chw[:, :32, 32:][:, :, ::-1])  # mirrored image's top left
    assert np.array_equal(crops[9], crops[4][:, :, ::-1])  # mirrored centre


def test_raw_images_decode_with_their_shape():
    src = _pixels(6, 40, 40)
    batch = _batch([src.tobytes()])
    batch["height"], batch["width"] = np.array([40]), np.array([40])
    out = ValPreset(crop=40, resize=40)(batch)
    assert np.array_equal(out["image"][0], src.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="does not match 30x40x3"):
        decode(src.tobytes(), height=30, width=40)


def test_apply_preset_drops_keys_unless_asked():
    batch = _batch([_jpeg(_pixels(0))])
    preset = TrainPreset(crop=32, eigval=EIGVAL, eigvec=EIGVEC)
    assert set(apply_preset(batch, preset=preset, seed=1)) == {"image", "label"}
    kept = apply_preset(batch, preset=preset, seed=1, keep_key=True)
    assert kept["key"].tolist() == [image_key(batch["id"][0])]


def test_gpu_decode_falls_back_to_cpu_with_one_warning(caplog, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine may have a GPU one day
    monkeypatch.setattr(augment, "_warned_cpu_decode", False)
    src = [_pixels(i, 24, 40) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="pipelines.augment"):
        first = augment.decode_jpeg_batch([_jpeg(p) for p in src], "cuda")
        augment.decode_jpeg_batch([_jpeg(src[0])], "cuda")
    assert sum("CUDA is not available" in r.message for r in caplog.records) == 1
    assert [tuple(t.shape) for t in first] == [(3, 24, 40)] * 3 and first[0].device.type == "cpu"
    pil = np.asarray(decode(_jpeg(src[0]))).transpose(2, 0, 1).astype(int)
    assert np.abs(first[0].numpy().astype(int) - pil).mean() < 2.0  # libjpeg vs PIL: same image
