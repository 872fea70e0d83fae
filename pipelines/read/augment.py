"""Augmentation presets, applied by Ray Data to whole batches of stored rows.

A preset turns a batch of stored images into uint8 NCHW arrays: the network's input before
normalisation. Normalisation and the float conversion happen on the training device
(alexnet.train.epochs), so the host-to-device copy is uint8, a quarter of float32.

Geometry (the paper's scheme, whatever size the images were stored at): the shorter side is
scaled to `resize`, then training takes a random `crop` x `crop` window and validation the centre
one (or the paper's ten crops). RandomResizedCrop keeps torchvision's semantics (its box is drawn
relative to the stored image, then scaled to `crop`). Train and val therefore see objects at the
same scale.

Reproducibility: every random choice for an image is a pure function of (seed, epoch, image id),
drawn for the whole batch at once (`TrainPreset.plans`, a counter-based generator), so it depends
neither on which task ran the image nor on how the stream was cut into batches, and the CPU path
(`TrainPreset.__call__`) and the device path (pipelines.read.device_augment) execute the same plans.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipelines.decode import decode_stored
from pipelines.images import scaled_size
from pipelines.imports import import_whole


def image_key(image_id: str) -> int:
    """The sha256 hex id of a stored image -> a non-negative int64 (its first 60 bits)."""
    return int(image_id[:15], 16)


def image_keys(ids) -> np.ndarray:
    """image_key of every id, as uint64."""
    return np.fromiter((image_key(str(i)) for i in ids), dtype=np.uint64, count=len(ids))


# --- counter-based random numbers: uniform[k] = f(seed, epoch, key, k), vectorised over keys ----

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs pass BigCrush as a stream."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, keys: np.ndarray, count: int) -> np.ndarray:
    """(N, count) floats in [0, 1): stream position k of image key keys[i] in (seed, epoch)."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        base = _mix(base + _GOLDEN * np.uint64(int(epoch) & 0xFFFFFFFF))
        per_image = _mix(base ^ np.asarray(keys, dtype=np.uint64))
        counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(per_image[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# Stream positions of each draw, fixed whatever the options, so turning one augmentation off does
# not change the others. Positions 0 and 1: the paper's crop (left, top).
_FLIP = 2
_NORMALS = slice(3, 7)  # two Box-Muller pairs -> the three lighting coefficients
_RRC = slice(7, 47)  # RandomResizedCrop: 10 tries x (area, log ratio, left, top)
_DRAWS = 47


def _normals(u: np.ndarray) -> np.ndarray:
    """(N, 4) uniforms -> (N, 3) standard normals (Box-Muller)."""
    r = np.sqrt(-2.0 * np.log1p(-u[:, 0::2]))  # 1 - u in (0, 1]: never log(0)
    theta = 2.0 * math.pi * u[:, 1::2]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :3]


# --- pixels ----------------------------------------------------------------------------------------

def resize_chw(x, height: int, width: int):
    """uint8 torch (3, H, W) -> uint8 (3, height, width): bilinear with antialiasing, as PIL's
    BILINEAR resize (torch's uint8 kernel on the CPU, float elsewhere, e.g. on a GPU)."""
    torch = import_whole("torch")
    F = import_whole("torch.nn.functional")

    if x.device.type == "cpu":
        return F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    y = F.interpolate(x[None].float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_array(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 numpy (3, H, W) -> (3, height, width), by `resize_chw`; no work when already that size."""
    if pixels.shape[1:] == (height, width):
        return pixels
    torch = import_whole("torch")
    return resize_chw(torch.from_numpy(np.ascontiguousarray(pixels)), height, width).numpy()


def store_flipped_lit(src: np.ndarray, out: np.ndarray, flip: bool, shift: np.ndarray) -> None:
    """out[:] = src (uint8 (3, h, w), any strides), mirrored left-right if `flip`, plus the
    per-channel lighting `shift` rounded and clipped to 0..255: one pass per channel, no
    intermediate image. Adding rint(shift) to integer levels equals rint(level + shift)."""
    if flip:
        src = src[:, :, ::-1]
    for k, d in enumerate(np.clip(np.rint(shift), -255, 255).astype(int).tolist()):
        if d >= 0:  # saturating uint8 add: min(v, 255 - d) + d
            np.minimum(src[k], 255 - d, out=out[k])
            out[k] += d
        else:
            np.maximum(src[k], -d, out=out[k])
            out[k] -= -d


def lighting_shift(eigval: Sequence[float], eigvec: Sequence[Sequence[float]], alpha) -> np.ndarray:
    """The paper's PCA lighting: the RGB shift sum_k alpha_k lambda_k p_k (0-1 scale, times 255) for
    coefficients alpha of shape (3,), or one shift per row for alpha of shape (N, 3)."""
    weighted = np.asarray(alpha, dtype=np.float64) * np.asarray(eigval, dtype=np.float64)
    return weighted @ np.asarray(eigvec, dtype=np.float64).T * 255.0


# One plan row per image: the size the stored image is scaled to before cropping, the crop box in
# that size, flip (0/1), and the lighting coefficients.
PLAN_FIELDS = ("width", "height", "left", "top", "right", "bottom", "flip", "alpha_r", "alpha_g", "alpha_b")


@dataclass(frozen=True)
class TrainPreset:
    """Training augmentation: shorter side to `resize` then a random `crop` window (the paper), or
    RandomResizedCrop; horizontal flip; PCA lighting ("fancy PCA")."""

    crop: int  # px, side of the square crop fed to the network (paper: 224, or 227 for its arithmetic)
    resize: int  # px, shorter side the image is scaled to before the paper's crop (paper: 256)
    eigval: tuple[float, ...]  # RGB covariance eigenvalues (0-1 scale), from dataset.json
    eigvec: tuple[tuple[float, ...], ...]  # columns are eigenvectors
    pca_lighting: float = 0.1  # std of the lighting coefficients alpha (paper: 0.1); 0 disables
    flip: bool = True  # horizontal flip with probability 1/2
    random_resized_crop: bool = False  # torchvision-style RandomResizedCrop instead of the paper's crop
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio range

    def __post_init__(self):
        if self.crop < 1 or self.resize < self.crop:
            raise ValueError(f"resize {self.resize} must be >= crop {self.crop} >= 1")

    def plans(self, widths, heights, keys, *, seed: int | None, epoch: int = 0) -> np.ndarray:
        """(N, len(PLAN_FIELDS)) float64: every random choice for N images of the given stored
        sizes, a pure function of (seed, epoch, key) per image (seed None: fresh entropy)."""
        widths = np.asarray(widths, dtype=np.int64)
        heights = np.asarray(heights, dtype=np.int64)
        seed = secrets.randbits(63) if seed is None else seed
        u = uniforms(seed, epoch, keys, _DRAWS)
        n = len(widths)
        plans = np.zeros((n, len(PLAN_FIELDS)), dtype=np.float64)
        if self.random_resized_crop:
            plans[:, 0], plans[:, 1] = widths, heights
            plans[:, 2:6] = self._rrc_boxes(widths, heights, u[:, _RRC])
        else:
            scaled = np.array([scaled_size(w, h, self.resize) for w, h in zip(widths.tolist(), heights.tolist())],
                              dtype=np.int64).reshape(n, 2)
            plans[:, 0:2] = scaled
            left = np.floor(u[:, 0] * (scaled[:, 0] - self.crop + 1))
            top = np.floor(u[:, 1] * (scaled[:, 1] - self.crop + 1))
            plans[:, 2:6] = np.stack([left, top, left + self.crop, top + self.crop], axis=1)
        plans[:, 6] = (u[:, _FLIP] < 0.5) if self.flip else 0.0
        if self.pca_lighting > 0:
            plans[:, 7:10] = _normals(u[:, _NORMALS]) * self.pca_lighting
        return plans

    def _rrc_boxes(self, widths: np.ndarray, heights: np.ndarray, u: np.ndarray) -> np.ndarray:
        """torchvision's RandomResizedCrop.get_params for every image at once: 10 tries at a box
        of random area fraction and log-uniform aspect ratio, the first that fits, else its
        centre-crop fallback."""
        u = u.reshape(len(widths), 10, 4)
        area = (widths * heights)[:, None].astype(np.float64)
        target = area * (self.scale[0] + u[..., 0] * (self.scale[1] - self.scale[0]))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(log_lo + u[..., 1] * (log_hi - log_lo))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
        first = fits.argmax(axis=1)
        rows = np.arange(len(widths))
        w, h = w[rows, first], h[rows, first]
        left = np.floor(u[rows, first, 2] * (widths - w + 1))
        top = np.floor(u[rows, first, 3] * (heights - h + 1))
        boxes = np.stack([left, top, left + w, top + h], axis=1)
        for i in np.flatnonzero(~fits.any(axis=1)):
            boxes[i] = self._fallback_box(int(widths[i]), int(heights[i]))
        return boxes

    def _fallback_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        x, y = (width - w) // 2, (height - h) // 2
        return x, y, x + w, y + h

    def decode_side(self) -> int | None:
        """The shorter side a stored image may be decoded at (JPEG DCT scaling): `resize` for the
        paper's crop; RandomResizedCrop may need every stored pixel."""
        return None if self.random_resized_crop else self.resize

    def execute(self, pixels: np.ndarray, plan: np.ndarray, out: np.ndarray) -> None:
        """One decoded uint8 (3, H, W) image (any decoded size) + its plan -> `out` (3, crop, crop)."""
        width, height = int(plan[0]), int(plan[1])
        pixels = resize_array(pixels, height, width)
        left, top, right, bottom = (int(v) for v in plan[2:6])
        window = pixels[:, top:bottom, left:right]
        if self.random_resized_crop:
            window = resize_array(window, self.crop, self.crop)
        shift = lighting_shift(self.eigval, self.eigvec, plan[7:10]) if self.pca_lighting > 0 else np.zeros(3)
        store_flipped_lit(window, out, bool(plan[6]), shift)

    def __call__(self, batch: dict, *, seed: int | None, epoch: int = 0) -> dict:
        n = len(batch["image"])
        decoded = None
        if "height" in batch and "width" in batch:
            heights, widths = np.asarray(batch["height"]), np.asarray(batch["width"])
        else:  # sizes unknown without decoding (batches built by hand): decode first, full size
            decoded = [decode_stored(b) for b in batch["image"]]
            heights = np.array([p.shape[1] for p in decoded])
            widths = np.array([p.shape[2] for p in decoded])
        keys = image_keys(batch["id"]) if "id" in batch else np.arange(n, dtype=np.uint64)
        plans = self.plans(widths, heights, keys, seed=seed, epoch=epoch)
        out = np.empty((n, 3, self.crop, self.crop), dtype=np.uint8)
        side = self.decode_side()
        for i in range(n):
            pixels = decoded[i] if decoded is not None else decode_stored(
                batch["image"][i], height=int(heights[i]), width=int(widths[i]), shorter_side=side)
            self.execute(pixels, plans[i], out[i])
        return _result(batch, out)


@dataclass(frozen=True)
class ValPreset:
    """Shorter side to `resize`, then the centre `crop` (deterministic). With `ten_crop`, the
    paper's test-time crops: the 4 corners and the centre, then the same five of the mirrored
    image (torchvision's TenCrop order), as uint8 (10, 3, crop, crop) per image."""

    crop: int  # px
    resize: int  # px, shorter side before the crop
    ten_crop: bool = False

    def __post_init__(self):
        if self.crop < 1 or self.resize < self.crop:
            raise ValueError(f"resize {self.resize} must be >= crop {self.crop} >= 1")

    def array(self, pixels: np.ndarray) -> np.ndarray:
        """One decoded uint8 (3, H, W) image (any size) -> (3, crop, crop) or (10, 3, crop, crop)."""
        width, height = scaled_size(pixels.shape[2], pixels.shape[1], self.resize)
        img = resize_array(pixels, height, width)
        c = self.crop
        centre = ((width - c) // 2, (height - c) // 2)
        if not self.ten_crop:
            x, y = centre
            return img[:, y:y + c, x:x + c]
        corners = [(0, 0), (width - c, 0), (0, height - c), (width - c, height - c), centre]
        crops = [img[:, y:y + c, x:x + c] for x, y in corners]
        mirrored = img[:, :, ::-1]
        crops += [mirrored[:, y:y + c, x:x + c] for x, y in corners]
        return np.stack(crops)

    def stored(self, data, *, height: int = 0, width: int = 0) -> np.ndarray:
        """One stored image -> its crop(s); decoded at reduced size where the codec allows."""
        return self.array(decode_stored(data, height=height, width=width, shorter_side=self.resize))

    def __call__(self, batch: dict, *, seed: int | None = None, epoch: int = 0) -> dict:
        n = len(batch["image"])
        shape = (n, 10, 3, self.crop, self.crop) if self.ten_crop else (n, 3, self.crop, self.crop)
        out = np.empty(shape, dtype=np.uint8)
        for i in range(n):
            out[i] = self.stored(batch["image"][i], height=stored_dim(batch, "height", i),
                                 width=stored_dim(batch, "width", i))
        return _result(batch, out)


def stored_dim(batch: dict, column: str, i: int) -> int:
    """Row i's stored `height` or `width`, 0 where the batch lacks it."""
    return int(batch[column][i]) if column in batch else 0


def _result(batch: dict, images: np.ndarray) -> dict:
    out = {"image": images, "label": np.asarray(batch["label"], dtype=np.int64)}
    if "id" in batch:  # kept only when the loader asked for keys (tests, debugging)
        out["key"] = image_keys(batch["id"]).astype(np.int64)
    return out


def apply_preset(batch: dict, *, preset, seed: int | None, epoch: int = 0, keep_key: bool = False) -> dict:
    """A preset on one batch of stored rows (pipelines.read.loader calls it for every `batch_rows` rows
    of a work unit). `keep_key` (tests, debugging) keeps each row's `key` and the `epoch` it was
    augmented for."""
    out = preset(batch, seed=seed, epoch=epoch)
    if keep_key:
        out["epoch"] = np.full(len(out["label"]), epoch, dtype=np.int64)
    else:
        out.pop("key", None)
    return out
