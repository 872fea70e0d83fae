"""Every bytes -> pixels path of the project, so that a file is the same pixels everywhere.

Ingest, the training and validation augmentation, evaluation and prediction all decode here:
- `open_source(data)`: a source file of any format PIL reads (JPEG, PNG, WebP, BMP, GIF's first
  frame, TIFF, PPM) -> RGB PIL image, EXIF orientation applied, every mode converted to RGB with
  transparency composited on white. Ingest stores what this returns; `alexnet predict` on a folder
  of files decodes with it too, so a phone photo is upright in both.
- `decode_stored(data, ...)`: an image as a dataset stores it (RGB JPEG or PNG bytes written by
  ingest, or raw pixels) -> uint8 (3, H, W). JPEGs go through libjpeg-turbo via torchvision (PIL's
  pixels at a fraction of PIL's overhead), or through PIL's DCT scaling when the caller needs at
  most half the stored size (libjpeg then skips most of the inverse DCT work).
- `decode_jpeg_batch(...)`: a batch of JPEGs decoded by nvJPEG on a CUDA device.

Every path refuses an image over MAX_IMAGE_PIXELS before decoding it, from its header: a
decompression bomb (a few KB of PNG that expand to gigabytes) is a reject in ingest and a per-row
error in predict, never an out-of-memory worker.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.imports import import_whole

log = logging.getLogger(__name__)

# Pixels (width x height) of the largest image any decoder accepts: 8192 x 8192. A 16-bit image
# of that size peaks near 1 GB while it is converted; a few decode in parallel per node.
MAX_IMAGE_PIXELS = 8192 * 8192

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """The bytes are not a readable image; the message says why (ingest's reject reason).

    Messages start with a short kind ("empty file", "not an image", "truncated image",
    "corrupt image", "too large", "too small") followed by ": details", so reports can group them."""


@dataclass(frozen=True)
class Source:
    """A decoded source file."""

    image: Image.Image  # RGB, upright
    size: tuple[int, int]  # (width, height) as stored in the file, before any DCT reduction
    mode: str  # the file's own PIL mode (RGB, L, P, CMYK, RGBA, I;16, ...)
    rotated: bool  # EXIF orientation turned or mirrored it


def is_jpeg(data) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"too large: {width}x{height} px is over the limit of {MAX_IMAGE_PIXELS} pixels "
                               f"(pipelines.decode.MAX_IMAGE_PIXELS)")


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # palette/EXIF chatter; the size is checked below
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise ImageDecodeError("not an image: no image format recognises these bytes") from err
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"too large: {err}") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ImageDecodeError(f"corrupt image: {err}") from err
    _check_pixels(*img.size)
    return img


def _load(img: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
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
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def open_source(data: bytes, shorter_side: int | None = None) -> Source:
    """A source file's bytes -> `Source` (RGB, upright). Raises ImageDecodeError.

    With `shorter_side`, a JPEG at least twice that size is decoded at the smallest power-of-two
    DCT reduction that keeps its shorter side >= `shorter_side` (2-8x less work when shrinking a
    large photo); the caller still resizes to the exact size."""
    img = _open(data)
    size, mode = img.size, img.mode
    if shorter_side and img.format == "JPEG" and min(size) >= 2 * shorter_side:
        scale = shorter_side / min(size)
        img.draft("RGB", (max(1, int(size[0] * scale)), max(1, int(size[1] * scale))))
    orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "TIFF", "WEBP", "PNG") else 1
    return Source(to_rgb(_load(img)), size, mode, orientation not in (None, 1))


def source_array(data: bytes) -> np.ndarray:
    """A source file -> uint8 (3, H, W), as `open_source` sees it (upright, RGB)."""
    return np.asarray(open_source(data).image, dtype=np.uint8).transpose(2, 0, 1)


def jpeg_size(data) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (SOFn), without decoding; None if there is none.
    Walks the segments as libjpeg does: bytes that are not a marker are skipped up to the next 0xFF
    (libjpeg warns "extraneous bytes before marker" and decodes on), so junk between segments
    cannot hide the frame header from this check while the decoder still finds it."""
    data = memoryview(data)
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x00, 0x01, *range(0xD0, 0xD8)):  # stuffed byte and standalone markers: no length
            i += 2
            continue
        if marker == 0xD9:  # end of image before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return ((data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]) if i + 9 <= n else None
        i += 2 + length
    return None


def _check_jpeg(data) -> None:
    """The pixel limit, from the frame header. A JPEG whose size cannot be read is refused, not
    handed to a decoder that might still find a frame (and allocate whatever it claims)."""
    size = jpeg_size(data)
    if size is None:
        raise ImageDecodeError("not a decodable JPEG: no frame header (SOFn) with its size")
    _check_pixels(*size)


def decode_stored(data, *, height: int = 0, width: int = 0, shorter_side: int | None = None) -> np.ndarray:
    """A stored image -> uint8 (3, H, W) RGB (possibly a strided view).

    JPEGs: with `shorter_side` and a stored image at least twice that size, PIL's DCT-scaled decode
    (output shorter side >= `shorter_side`); otherwise torchvision's libjpeg-turbo decoder, full size.
    A JPEG either decoder rejects goes through PIL so the error is PIL's. Other formats: PIL. Raw
    pixels (no known magic) need the row's `height` and `width`."""
    head = bytes(data[:8])
    if head[:3] == JPEG_MAGIC:
        _check_jpeg(data)
        if not (shorter_side and min(height, width) >= 2 * shorter_side):
            torch, tvio = import_whole("torch"), import_whole("torchvision.io")
            try:
                return tvio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                        mode=tvio.ImageReadMode.RGB).numpy()
            except RuntimeError:
                pass
        return np.asarray(open_source(bytes(data), shorter_side).image, dtype=np.uint8).transpose(2, 0, 1)
    if head != PNG_MAGIC and height > 0 and width > 0 and len(data) == height * width * 3:
        return _raw(data, height, width)
    try:
        return source_array(bytes(data))  # PNG, or another format PIL reads
    except ImageDecodeError:
        if head == PNG_MAGIC or height <= 0 or width <= 0:
            raise
        raise ValueError(f"raw image of {len(data)} bytes does not match {height}x{width}x3") from None


def _raw(data, height: int, width: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).transpose(2, 0, 1)


_warned_cpu_decode = False


def decode_jpeg_batch(data: Sequence, device: str = "cuda") -> list:
    """JPEG bytes -> list of uint8 (3, H, W) torch tensors on `device`, decoded by nvJPEG
    (`torchvision.io.decode_jpeg(device="cuda")`) in one batched call. Without CUDA it decodes on
    the CPU with libjpeg instead and warns once."""
    global _warned_cpu_decode
    torch, tvio = import_whole("torch"), import_whole("torchvision.io")

    for b in data:
        _check_jpeg(b)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        if not _warned_cpu_decode:
            log.warning("GPU JPEG decode requested but CUDA is not available; decoding on the CPU")
            _warned_cpu_decode = True
        device = "cpu"
    if str(device).startswith("cuda"):
        return tvio.decode_jpeg(tensors, mode=tvio.ImageReadMode.RGB, device=device)  # grayscale/CMYK JPEGs too
    return [tvio.decode_jpeg(t, mode=tvio.ImageReadMode.RGB) for t in tensors]
