"""Augmentation presets, applied by Ray Data to whole batches (`map_batches`).

A preset turns a batch of stored images into uint8 NCHW arrays: the network's input before
normalisation. Normalisation and the float conversion happen on the training device, so the
host-to-device copy is uint8, a quarter of float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.images import open_rgb


@dataclass(frozen=True)
class TrainPreset:
    """The paper's training augmentation: random crop, horizontal flip, PCA lighting."""

    crop: int  # px, side of the square crop fed to the network
    eigval: tuple[float, ...]  # RGB covariance eigenvalues (0-1 scale), from dataset.json
    eigvec: tuple[tuple[float, ...], ...]  # columns are eigenvectors
    pca_std: float = 0.1  # std of the lighting coefficients (paper: 0.1); 0 disables
    flip: bool = True

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        out = np.empty((len(batch["image"]), 3, self.crop, self.crop), dtype=np.uint8)
        basis = np.asarray(self.eigvec) * np.asarray(self.eigval)  # column k scaled by lambda_k
        for i, data in enumerate(batch["image"]):
            img = _at_least(open_rgb(data), self.crop)
            w, h = img.size
            x, y = rng.integers(0, w - self.crop + 1), rng.integers(0, h - self.crop + 1)
            pixels = np.asarray(img.crop((x, y, x + self.crop, y + self.crop)), dtype=np.float32)
            if self.flip and rng.random() < 0.5:
                pixels = pixels[:, ::-1]
            if self.pca_std > 0:
                shift = basis @ rng.normal(0.0, self.pca_std, size=3) * 255.0
                pixels = pixels + shift.astype(np.float32)
            out[i] = np.clip(pixels, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        return {"image": out, "label": np.asarray(batch["label"], dtype=np.int64)}


@dataclass(frozen=True)
class ValPreset:
    """Resize the shorter side, then centre-crop: deterministic."""

    crop: int  # px
    resize: int  # px, shorter side before the crop

    def __call__(self, batch: dict, rng: np.random.Generator | None = None) -> dict:
        out = np.empty((len(batch["image"]), 3, self.crop, self.crop), dtype=np.uint8)
        for i, data in enumerate(batch["image"]):
            img = _shorter_side(open_rgb(data), self.resize)
            w, h = img.size
            x, y = (w - self.crop) // 2, (h - self.crop) // 2
            out[i] = np.asarray(img.crop((x, y, x + self.crop, y + self.crop)), dtype=np.uint8).transpose(2, 0, 1)
        return {"image": out, "label": np.asarray(batch["label"], dtype=np.int64)}


def _shorter_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def _at_least(img: Image.Image, size: int) -> Image.Image:
    return img if min(img.size) >= size else _shorter_side(img, size)


def apply_preset(batch: dict, *, preset, seed: int | None) -> dict:
    """`map_batches` entry point. The preset is a small frozen object shipped once per task; the
    RNG is seeded from the rows' ids so a batch's augmentation does not depend on which worker ran it."""
    rng = None
    if seed is not None:
        ids = batch.get("id")
        key = [int(i[:8], 16) for i in ids] if ids is not None else []
        rng = np.random.default_rng([seed, *key])
    elif not isinstance(preset, ValPreset):
        rng = np.random.default_rng()
    return preset(batch, rng)
