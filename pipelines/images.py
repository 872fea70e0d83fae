"""What ingest does to a decoded image before storing it: resize, square crop, encode.

Decoding lives in pipelines.decode (every bytes -> pixels path in one module).
"""

from __future__ import annotations

import io

from PIL import Image

# Extensions ingest looks at; anything else in a class folder is reported, not silently skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The largest image file read whole (ingest, predict on a folder): a 100-megapixel TIFF is ~300 MB
# uncompressed, far above any photo a classifier trains on; a file past it is a reject, not a read
# that takes a Ray worker's memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024


def scaled_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `shorter` px, keeping the aspect ratio: the
    one rounding rule of ingest, training and validation."""
    if min(width, height) == shorter:
        return width, height
    scale = shorter / min(width, height)
    return max(shorter, round(width * scale)), max(shorter, round(height * scale))


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` px, keeping aspect ratio (the paper resizes to 256)."""
    new = scaled_size(*img.size, size)
    return img if new == img.size else img.resize(new, Image.BICUBIC, reducing_gap=None)


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
        img.save(buf, format="PNG", compress_level=1)  # level 1: nearly as small as the default 6, at a fraction of its CPU
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected jpeg or png")
    return buf.getvalue()
