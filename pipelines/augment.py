"""Augmentation presets, applied by Ray Data to whole batches (`map_batches`).

A preset turns a batch of stored images into uint8 NCHW arrays: the network's input before
normalisation. Normalisation and the float conversion happen on the training device
(`normalize` below, or alexnet.engine), so the host-to-device copy is uint8, a quarter of float32.

Reproducibility: every random choice for an image comes from its own generator, seeded by
(seed, epoch, image id) (`image_rng`), so it depends neither on which task ran the image nor on
how Ray Data cut the stream into blocks and batches.

Speed (the CPU path decodes every training image every epoch): JPEGs are decoded by torchvision's
libjpeg-turbo binding, which gives PIL's pixels in ~60% of PIL's time; crops are array views; the
flip, the lighting and the HWC->CHW store are one pass per channel into the batch array (measured
on 256 px JPEGs -> 224 crops, batches of 128: 0.70 ms per image with PIL crop/flip/LUT, 0.52 ms
this way).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from pipelines.imports import import_whole

log = logging.getLogger(__name__)


def image_key(image_id: str) -> int:
    """The sha256 hex id of a stored image -> a non-negative int64 (its first 60 bits)."""
    return int(image_id[:15], 16)


def image_rng(seed: int, epoch: int, key: int) -> np.random.Generator:
    """The generator for one image in one epoch: a pure function of (seed, epoch, image key)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(key)])


def decode(data: bytes, *, height: int = 0, width: int = 0, draft: int | None = None) -> Image.Image:
    """Stored bytes -> RGB PIL image. JPEG/PNG are decoded (JPEG at the smallest DCT scale whose
    shorter side is still >= `draft` px, which skips most of the IDCT work); anything else is
    the raw uint8 HxWx3 format, which needs the row's height and width."""
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        img = Image.open(io.BytesIO(data))
        if draft:
            img.draft("RGB", (draft, draft))
        return img if img.mode == "RGB" else img.convert("RGB")
    if height <= 0 or width <= 0 or len(data) != height * width * 3:
        raise ValueError(f"raw image of {len(data)} bytes does not match {height}x{width}x3")
    return Image.frombuffer("RGB", (width, height), data, "raw", "RGB", 0, 1)


def decode_array(data: bytes, *, height: int = 0, width: int = 0) -> np.ndarray:
    """Stored bytes -> uint8 (3, H, W) RGB (possibly a strided view). JPEGs through torchvision's
    libjpeg-turbo decoder (same pixels as PIL's, less overhead); anything it cannot read (PNG, raw,
    or a JPEG it rejects) through `decode`, so a corrupt image still fails with PIL's message."""
    if data[:3] == b"\xff\xd8\xff":
        torch, tvio = import_whole("torch"), import_whole("torchvision.io")
        try:
            return tvio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                    mode=tvio.ImageReadMode.RGB).numpy()
        except RuntimeError:
            pass
    return np.asarray(decode(data, height=height, width=width), dtype=np.uint8).transpose(2, 0, 1)


def resize_chw(x, height: int, width: int):
    """uint8 torch (3, H, W) -> uint8 (3, height, width): bilinear with antialiasing, as PIL's
    BILINEAR resize (torch's uint8 kernel on the CPU, float elsewhere, e.g. on a GPU)."""
    import torch
    import torch.nn.functional as F

    if x.device.type == "cpu":
        return F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    y = F.interpolate(x[None].float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def _resize_array(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
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


def shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` px, keeping the aspect ratio (bilinear, antialiased)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


PLAN_FIELDS = ("width", "height", "left", "top", "right", "bottom", "flip", "alpha_r", "alpha_g", "alpha_b")


def lighting_shift(eigval: Sequence[float], eigvec: Sequence[Sequence[float]], alpha) -> np.ndarray:
    """The paper's PCA lighting: the RGB shift sum_k alpha_k lambda_k p_k (0-1 scale, times 255) for
    coefficients alpha of shape (3,), or one shift per row for alpha of shape (N, 3)."""
    weighted = np.asarray(alpha, dtype=np.float64) * np.asarray(eigval, dtype=np.float64)
    return weighted @ np.asarray(eigvec, dtype=np.float64).T * 255.0


def _chw(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


@dataclass(frozen=True)
class TrainPreset:
    """Training augmentation: the paper's random crop (or RandomResizedCrop), horizontal flip and
    PCA lighting ("fancy PCA"). Draws, per image and in this order: the crop, the flip, alpha."""

    crop: int  # px, side of the square crop fed to the network (paper: 224, or 227 for its arithmetic)
    eigval: tuple[float, ...]  # RGB covariance eigenvalues (0-1 scale), from dataset.json
    eigvec: tuple[tuple[float, ...], ...]  # columns are eigenvectors
    pca_std: float = 0.1  # std of the lighting coefficients alpha (paper: 0.1); 0 disables
    flip: bool = True  # horizontal flip with probability 1/2
    random_resized_crop: bool = False  # torchvision-style RandomResizedCrop instead of the paper's crop
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio range

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in the stored image, which must be at least `crop` px a side
        for the paper's crop (smaller images are upscaled first)."""
        if not self.random_resized_crop:
            x = int(rng.integers(0, width - self.crop + 1))
            y = int(rng.integers(0, height - self.crop + 1))
            return x, y, x + self.crop, y + self.crop
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):  # torchvision's rejection sampling, then its centre-crop fallback
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return x, y, x + w, y + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        x, y = (width - w) // 2, (height - h) // 2
        return x, y, x + w, y + h

    def plan(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """Every random choice for one image of `width` x `height` px, without its pixels, as float64
        PLAN_FIELDS: the size it is first scaled to (the paper's crop upscales images smaller than
        the crop), the crop box in that size, flip (0/1) and the lighting coefficients alpha.
        `array` executes a plan on the CPU; pipelines.device_augment with torch on a GPU."""
        if not self.random_resized_crop and min(width, height) < self.crop:
            scale = self.crop / min(width, height)
            width, height = max(self.crop, round(width * scale)), max(self.crop, round(height * scale))
        box = self.crop_box(width, height, rng)
        flip = self.flip and rng.random() < 0.5
        alpha = rng.normal(0.0, self.pca_std, size=3) if self.pca_std > 0 else np.zeros(3)
        return np.array([width, height, *box, float(flip), *alpha], dtype=np.float64)

    def array(self, pixels: np.ndarray, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
        """One decoded uint8 (3, H, W) image -> uint8 (3, crop, crop), written into `out` if given."""
        plan = self.plan(pixels.shape[2], pixels.shape[1], rng)
        width, height = int(plan[0]), int(plan[1])
        if (height, width) != pixels.shape[1:]:  # the paper's crop upscales small images first
            pixels = _resize_array(pixels, height, width)
        left, top, right, bottom = (int(v) for v in plan[2:6])
        window = pixels[:, top:bottom, left:right]
        if self.random_resized_crop:
            window = _resize_array(window, self.crop, self.crop)
        shift = lighting_shift(self.eigval, self.eigvec, plan[7:10]) if self.pca_std > 0 else np.zeros(3)
        out = np.empty((3, self.crop, self.crop), dtype=np.uint8) if out is None else out
        store_flipped_lit(window, out, bool(plan[6]), shift)
        return out

    def __call__(self, batch: dict, *, seed: int | None, epoch: int = 0) -> dict:
        n = len(batch["image"])
        out = np.empty((n, 3, self.crop, self.crop), dtype=np.uint8)
        shared = np.random.default_rng() if seed is None else None  # unseeded: fresh entropy per batch
        for i in range(n):
            rng = shared if shared is not None else image_rng(seed, epoch, image_key(str(batch["id"][i])))
            pixels = decode_array(batch["image"][i], height=stored_dim(batch, "height", i),
                                  width=stored_dim(batch, "width", i))
            self.array(pixels, rng, out=out[i])
        return _result(batch, out)


@dataclass(frozen=True)
class ValPreset:
    """Resize the shorter side, then centre-crop (deterministic). With `ten_crop`, the paper's
    test-time crops: the 4 corners and the centre, then the same five of the mirrored image
    (torchvision's TenCrop order), as uint8 (10, 3, crop, crop) per image."""

    crop: int  # px
    resize: int  # px, shorter side before the crop
    ten_crop: bool = False

    def image(self, img: Image.Image) -> np.ndarray:
        img = shorter_side(img, self.resize)
        w, h, c = *img.size, self.crop
        centre = ((w - c) // 2, (h - c) // 2)
        if not self.ten_crop:
            return _chw(img.crop((*centre, centre[0] + c, centre[1] + c)))
        corners = [(0, 0), (w - c, 0), (0, h - c), (w - c, h - c), centre]
        crops = [img.crop((x, y, x + c, y + c)) for x, y in corners]
        crops += [im.crop((x, y, x + c, y + c)) for im in [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
                  for x, y in corners]
        return np.stack([_chw(im) for im in crops])

    def __call__(self, batch: dict, *, seed: int | None = None, epoch: int = 0) -> dict:
        n = len(batch["image"])
        shape = (n, 10, 3, self.crop, self.crop) if self.ten_crop else (n, 3, self.crop, self.crop)
        out = np.empty(shape, dtype=np.uint8)
        for i in range(n):
            out[i] = self.image(_decode_row(batch, i, draft=self.resize))
        return _result(batch, out)


def stored_dim(batch: dict, column: str, i: int) -> int:
    """Row i's stored `height` or `width`, 0 where the batch lacks it (only raw pixels need it)."""
    return int(batch[column][i]) if column in batch else 0


def _decode_row(batch: dict, i: int, draft: int | None = None) -> Image.Image:
    return decode(batch["image"][i], height=stored_dim(batch, "height", i), width=stored_dim(batch, "width", i),
                  draft=draft)


def _result(batch: dict, images: np.ndarray) -> dict:
    out = {"image": images, "label": np.asarray(batch["label"], dtype=np.int64)}
    if "id" in batch:  # kept only when the loader asked for keys (tests, debugging)
        out["key"] = np.fromiter((image_key(str(i)) for i in batch["id"]), dtype=np.int64, count=len(images))
    return out


def apply_preset(batch: dict, *, preset, seed: int | None, epoch: int = 0, keep_key: bool = False) -> dict:
    """A preset on one batch of stored rows, dropping `key` unless asked (pipelines.loader calls it
    for every `batch_rows` rows of a work unit, with the epoch it read once per unit)."""
    out = preset(batch, seed=seed, epoch=epoch)
    if not keep_key:
        out.pop("key", None)
    return out


_warned_cpu_decode = False


def decode_jpeg_batch(data: Sequence[bytes], device: str = "cuda") -> list:
    """JPEG bytes -> list of uint8 (3, H, W) torch tensors on `device`, decoded by nvJPEG
    (`torchvision.io.decode_jpeg(device="cuda")`) in one batched call. Without CUDA it decodes on
    the CPU with libjpeg instead and warns once. Self-contained, for a worker or a script:
    `decode_jpeg_batch(list_of_bytes, "cuda")`."""
    global _warned_cpu_decode
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        if not _warned_cpu_decode:
            log.warning("GPU JPEG decode requested but CUDA is not available; decoding on the CPU")
            _warned_cpu_decode = True
        device = "cpu"
    if str(device).startswith("cuda"):
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)  # grayscale/CMYK JPEGs too
    return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]
