"""Decode and encode single images: the only place that knows about PIL.

Pure functions over bytes and numpy arrays, so ingest, augmentation and prediction all decode
the same way (EXIF orientation applied, first frame of an animation, every mode -> RGB, alpha
composited on white).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions ingest looks at; anything else in a class folder is reported, not silently skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """The bytes are not a readable image; the message says why (used as the reject reason).

    Messages start with a short kind ("empty file", "not an image", "truncated image",
    "corrupt image", "too small") followed by ": details", so reports can group them."""


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, palette warnings
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise ImageDecodeError("not an image: no image format recognises these bytes") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ImageDecodeError(f"corrupt image: {err}") from err


def _load(img: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()  # PIL decodes lazily; a truncated file only fails here
            return ImageOps.exif_transpose(img)
    except Exception as err:
        kind = "truncated image" if "truncated" in str(err) or isinstance(err, EOFError) else "corrupt image"
        raise ImageDecodeError(f"{kind}: {err}") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, CMYK, I;16, RGBA, LA...) -> RGB; transparency composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white rather than dropping alpha, which leaves arbitrary colours behind.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float greyscale (TIFF, PNG): scale to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def open_rgb(data: bytes) -> Image.Image:
    """Decode to an RGB PIL image with EXIF orientation applied (first frame of a GIF)."""
    return to_rgb(_load(_open(data)))


def decode_for_ingest(data: bytes, shorter_side: int | None = None) -> tuple[Image.Image, tuple[int, int], str, bool]:
    """Decode for ingest: -> (RGB image, source (width, height), source mode, rotated).

    With `shorter_side`, a JPEG is decoded in draft mode at the smallest power-of-two reduction
    that still leaves the shorter side >= `shorter_side` (libjpeg's DCT scaling: 2-8x less work
    when shrinking a large photo; the caller still resizes to the exact size)."""
    img = _open(data)
    size, mode = img.size, img.mode
    if shorter_side and img.format == "JPEG" and min(size) >= 2 * shorter_side:
        scale = shorter_side / min(size)
        img.draft("RGB", (max(1, int(size[0] * scale)), max(1, int(size[1] * scale))))
    orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "TIFF", "WEBP", "PNG") else 1
    out = to_rgb(_load(img))
    return out, size, mode, orientation not in (None, 1)


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` px, keeping aspect ratio (the paper resizes to 256)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.BICUBIC, reducing_gap=None)


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, then crop the centre square (for --format raw)."""
    img = resize_shorter_side(img, size)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode an RGB image as JPEG or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, optimize=False)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)  # level 1: ~as small as 6, several times faster
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected jpeg or png")
    return buf.getvalue()


def decode_rgb_array(data: bytes) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 array."""
    return np.asarray(open_rgb(data), dtype=np.uint8)


def decode_raw(data: bytes, height: int, width: int) -> np.ndarray:
    """Bytes stored by --format raw (uint8 RGB, row-major) -> HxWx3 array, no copy."""
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"
