"""Decode and encode single images: the only place that knows about PIL.

Pure functions over bytes and numpy arrays, so ingest, augmentation and prediction all decode
the same way (EXIF orientation applied, every mode converted to RGB).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# Extensions ingest looks at; anything else in a class folder is reported, not silently skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """The bytes are not a readable image; the message says why (used as the reject reason)."""


def open_rgb(data: bytes) -> Image.Image:
    """Decode to an RGB PIL image with EXIF orientation applied (first frame of a GIF)."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # PIL decodes lazily; a truncated file only fails here
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ImageDecodeError(f"not a readable image: {err}") from err
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white rather than dropping alpha, which leaves arbitrary colours behind.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` px, keeping aspect ratio (the paper resizes to 256)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.BICUBIC)


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


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"
