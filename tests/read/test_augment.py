"""Pure unit tests of the augmentation presets: no Ray, real JPEG/PNG/raw bytes."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.read import augment
from pipelines.read.augment import TrainPreset, ValPreset, apply_preset, image_key
from pipelines import decode as decoding

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
    out = TrainPreset(crop=32, resize=48, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=0.0, flip=True)(batch, seed=0)
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
    out = TrainPreset(crop=64, resize=64, eigval=EIGVAL, eigvec=EIGVEC)(_batch([_jpeg(_pixels(1, 40, 50))]), seed=1)
    assert out["image"].shape == (1, 3, 64, 64)


def test_pca_lighting_shifts_colour_along_the_eigenvector():
    grey = np.full((40, 40, 3), 128, dtype=np.uint8)
    batch = _batch([_png(grey) for _ in range(1)] * 1)
    shifts = []
    for epoch in range(8):
        out = TrainPreset(crop=32, resize=32, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=0.1, flip=False)(batch, seed=3, epoch=epoch)
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


def test_random_resized_crop_shape_range_and_variety():
    batch = _batch([_jpeg(_pixels(i, 60, 90)) for i in range(6)])
    preset = TrainPreset(crop=40, resize=40, eigval=EIGVAL, eigvec=EIGVEC, random_resized_crop=True)
    a, b = preset(batch, seed=7, epoch=0), preset(batch, seed=7, epoch=1)
    assert a["image"].shape == (6, 3, 40, 40) and a["image"].dtype == np.uint8
    assert not np.array_equal(a["image"], b["image"])
    plans = preset.plans([90] * 500, [60] * 500, np.arange(500, dtype=np.uint64), seed=3)
    x0, y0, x1, y1 = plans[:, 2:6].T
    assert ((0 <= x0) & (x0 < x1) & (x1 <= 90) & (0 <= y0) & (y0 < y1) & (y1 <= 60)).all()
    area = (x1 - x0) * (y1 - y0) / (90 * 60)
    assert area.min() < 0.2 and area.max() > 0.8  # torchvision's scale range (0.08, 1)
    ratio = (x1 - x0) / (y1 - y0)
    assert 0.7 < ratio.min() and ratio.max() < 1.4  # (3/4, 4/3), up to rounding


def test_seeded_train_augmentation_ignores_batch_boundaries_and_order():
    images = [_jpeg(_pixels(i)) for i in range(9)]
    preset = TrainPreset(crop=32, resize=32, eigval=EIGVAL, eigvec=EIGVEC)
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
    preset = TrainPreset(crop=32, resize=32, eigval=EIGVAL, eigvec=EIGVEC)
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
        decoding.decode_stored(src.tobytes(), height=30, width=40)


def test_apply_preset_drops_keys_unless_asked():
    batch = _batch([_jpeg(_pixels(0))])
    preset = TrainPreset(crop=32, resize=32, eigval=EIGVAL, eigvec=EIGVEC)
    assert set(apply_preset(batch, preset=preset, seed=1)) == {"image", "label"}
    kept = apply_preset(batch, preset=preset, seed=1, epoch=3, keep_key=True)
    assert kept["key"].tolist() == [image_key(batch["id"][0])] and kept["epoch"].tolist() == [3]


def _disc_jpeg(size: int = 256, radius: float = 0.3) -> bytes:
    """A dark disc centred on a white square image: an object whose extent we know."""
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2 < (radius * size) ** 2
    pixels = np.where(inside[..., None], 20, 235).astype(np.uint8).repeat(3, axis=2)
    return _jpeg(pixels)


def _dark(images: np.ndarray) -> np.ndarray:
    """Dark pixels per image of an (N, 3, H, W) batch."""
    return (images.mean(axis=1) < 128).sum(axis=(1, 2))


def test_train_crops_see_the_object_at_vals_scale_whatever_the_stored_size():
    """Stored at 256 px, trained at resize 72 / crop 64 (the demo and smoke recipes): every random
    training crop holds the whole disc at the scale validation's centre crop shows it, as in the
    paper (rescale, then crop). A crop taken from the stored 256 px image would hold a 64 px
    corner of it: between none and all of its 4096 pixels dark."""
    data = _disc_jpeg()
    batch = _batch([data] * 16)
    batch["id"] = np.array([hashlib.sha256(bytes([i])).hexdigest() for i in range(16)], dtype=object)
    batch["height"], batch["width"] = np.full(16, 256), np.full(16, 256)
    train = TrainPreset(crop=64, resize=72, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=0.0)(batch, seed=0)["image"]
    val = ValPreset(crop=64, resize=72)(batch)["image"]
    disc = np.pi * (0.3 * 72) ** 2  # its area at the recipe's scale: ~1466 px
    assert abs(_dark(val[:1])[0] - disc) < 0.05 * disc
    assert np.all(np.abs(_dark(train) - _dark(val[:1])[0]) < 0.05 * disc)
    assert len({img.tobytes() for img in train}) > 1  # the crops do move


def test_device_path_crops_at_vals_scale_too():
    """data.decode=gpu executes the same plans with torch (here on the CPU device)."""
    import torch

    from pipelines.read.device_augment import augment_on_device, plan_batch

    batch = _batch([_disc_jpeg()] * 8)
    batch["height"], batch["width"] = np.full(8, 256), np.full(8, 256)
    preset = TrainPreset(crop=64, resize=72, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=0.0)
    planned = plan_batch(batch, preset=preset, seed=0)
    out = augment_on_device(planned, preset, torch.device("cpu"))["image"].numpy()
    val = ValPreset(crop=64, resize=72)(batch)["image"]
    assert out.shape == (8, 3, 64, 64)
    assert np.all(np.abs(_dark(out) - _dark(val[:1])[0]) < 0.05 * np.pi * (0.3 * 72) ** 2)


def test_random_resized_crop_outputs_the_recipes_crop_from_any_stored_size():
    batch = _batch([_disc_jpeg(256)] * 4)
    batch["height"], batch["width"] = np.full(4, 256), np.full(4, 256)
    preset = TrainPreset(crop=64, resize=72, eigval=EIGVAL, eigvec=EIGVEC, random_resized_crop=True)
    assert preset(batch, seed=1)["image"].shape == (4, 3, 64, 64)
    plans = preset.plans([256] * 4, [256] * 4, np.arange(4, dtype=np.uint64), seed=1)
    assert (plans[:, 0:2] == 256).all()  # boxes are drawn in the stored image, as torchvision does


def test_plans_are_a_pure_function_of_seed_epoch_and_key():
    preset = TrainPreset(crop=64, resize=72, eigval=EIGVAL, eigvec=EIGVEC, pca_lighting=0.1)
    keys = np.arange(2000, dtype=np.uint64) * 7919
    widths, heights = np.full(2000, 96), np.full(2000, 128)
    a = preset.plans(widths, heights, keys, seed=4, epoch=2)
    assert np.array_equal(a[::-1], preset.plans(widths[::-1], heights[::-1], keys[::-1], seed=4, epoch=2))
    assert np.array_equal(a[5:9], preset.plans(widths[5:9], heights[5:9], keys[5:9], seed=4, epoch=2))
    assert not np.array_equal(a, preset.plans(widths, heights, keys, seed=4, epoch=3))
    assert not np.array_equal(a, preset.plans(widths, heights, keys, seed=5, epoch=2))
    assert (a[:, 0] == 72).all() and (a[:, 1] == 96).all()  # 96x128 scaled to a 72 px shorter side
    assert (a[:, 2] >= 0).all() and (a[:, 4] <= 72).all() and (a[:, 5] <= 96).all()
    assert a[:, 2].min() == 0 and a[:, 2].max() == 8 and a[:, 3].max() == 32  # every position is reachable
    assert 0.45 < a[:, 6].mean() < 0.55  # flips
    alpha = a[:, 7:10]
    assert np.allclose(alpha.std(axis=0), 0.1, rtol=0.1) and np.allclose(alpha.mean(axis=0), 0, atol=0.01)
    assert abs(np.corrcoef(alpha.T)[0, 1]) < 0.1  # independent coefficients
