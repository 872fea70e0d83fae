"""pipelines.decode: every bytes -> pixels path, on real image files of every accepted format."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import decode
from pipelines.decode import ImageDecodeError, decode_stored, jpeg_size, open_source, source_array
from tests.support import png_header_only

ROOT = Path(__file__).resolve().parents[2]


def _picture(h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth colour gradients plus a dark block in the top-left: lossy codecs keep it recognisable
    and any rotation or mirror moves the block."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], axis=2).astype(np.uint8)
    img[: h // 3, : w // 4] = 10
    return img


def _encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, kw, tolerance", [
    ("JPEG", {"quality": 95}, 6), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("BMP", {}, 0),
    ("TIFF", {}, 0), ("GIF", {}, 40), ("PPM", {}, 0)])
def test_every_accepted_format_decodes_to_the_same_picture(fmt, kw, tolerance):
    src = _picture()
    out = source_array(_encode(src, fmt, **kw))
    assert out.shape == (3, 48, 64) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - src.transpose(2, 0, 1)).mean() <= tolerance


def test_exif_orientation_is_applied():
    """A phone photo: pixels stored turned, with EXIF Orientation saying how to turn them back."""
    src = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are the picture turned 90 CCW
    turned = np.ascontiguousarray(np.rot90(src, k=1))
    data = _encode(turned, "JPEG", quality=95, exif=exif.tobytes())
    decoded = open_source(data)
    assert decoded.rotated and decoded.size == (48, 64)
    assert np.abs(source_array(data).astype(int) - src.transpose(2, 0, 1)).mean() < 6


def test_transparency_is_composited_on_white_and_modes_become_rgb():
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left half opaque red, right half fully transparent
    out = source_array(_encode(rgba, "PNG"))
    assert out[:, 5, 5].tolist() == [200, 0, 0] and out[:, 5, 25].tolist() == [255, 255, 255]
    grey = source_array(_encode(np.full((10, 12), 77, dtype=np.uint8), "PNG"))
    assert grey.shape == (3, 10, 12) and (grey == 77).all()
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, format="PNG")
    assert (source_array(buf.getvalue()) == 255).all()  # 16-bit scaled to 8, not clipped


@pytest.mark.fault("a stored JPEG truncated inside its header", inputs=1,
                   outcome="ImageDecodeError, not a crash or garbage pixels")
def test_stored_jpegs_decode_to_pils_pixels_and_errors_are_pils():
    src = _picture(33, 47)
    for data in (_encode(src, "JPEG"), _encode(src, "PNG")):
        arr = decode_stored(data)
        assert arr.shape == (3, 33, 47)
        assert np.array_equal(arr, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1))
    with pytest.raises(ImageDecodeError):
        decode_stored(_encode(src, "JPEG")[:40])  # truncated inside the header


def test_dct_scaled_decode_keeps_at_least_the_asked_side_and_the_picture():
    src = _picture(256, 320)
    data = _encode(src, "JPEG", quality=95)
    full = decode_stored(data, height=256, width=320)
    half = decode_stored(data, height=256, width=320, shorter_side=100)  # 1/2 scale: 128 >= 100
    assert full.shape == (3, 256, 320) and half.shape == (3, 128, 160)
    assert np.abs(half.astype(int) - full[:, ::2, ::2].astype(int)).mean() < 8
    assert decode_stored(data, height=256, width=320, shorter_side=200).shape == (3, 256, 320)  # < 2x: full


def test_raw_pixels_need_their_shape():
    src = _picture(10, 12)
    assert np.array_equal(decode_stored(src.tobytes(), height=10, width=12), src.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="does not match 11x12x3"):
        decode_stored(src.tobytes(), height=11, width=12)


@pytest.mark.fault("image over the pixel limit (PNG header, JPEG frame header, nvJPEG batch)", inputs=3,
                   outcome="ImageDecodeError 'too large' before any pixel is decoded; an image under the limit decodes")
def test_images_over_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageDecodeError, match="too large: 200x100 px"):
        open_source(png_header_only(200, 100))
    big_jpeg = _encode(_picture(120, 100), "JPEG")
    assert jpeg_size(big_jpeg) == (100, 120)
    for call in (lambda: decode_stored(big_jpeg), lambda: decode.decode_jpeg_batch([big_jpeg], "cpu")):
        with pytest.raises(ImageDecodeError, match="too large: 100x120 px"):
            call()
    assert decode_stored(_encode(_picture(50, 60), "JPEG")).shape == (3, 50, 60)  # under the limit


def _junk_before_frame(jpeg: bytes) -> bytes:
    """`jpeg` with junk bytes between two segments, just before the frame header (SOF0): libjpeg
    skips them ("extraneous bytes before marker") and decodes the image as before."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof] + b"\x00junk" + jpeg[sof:]


@pytest.mark.fault("a JPEG with junk bytes before its frame header; one with no frame header", inputs=2,
                   outcome="the size check still reads the junked one's size ('too large'); the headless one is refused")
def test_junk_between_segments_does_not_skip_the_size_check(monkeypatch):
    junked = _junk_before_frame(_encode(_picture(120, 100), "JPEG"))
    assert decode_stored(junked).shape == (3, 120, 100)  # the decoders still find the frame: the threat is real
    assert jpeg_size(junked) == (100, 120)
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 100 * 100)
    for call in (lambda: decode_stored(junked), lambda: decode.decode_jpeg_batch([junked], "cpu")):
        with pytest.raises(ImageDecodeError, match="too large: 100x120 px"):
            call()
    headless = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
    with pytest.raises(ImageDecodeError, match="no frame header"):
        decode_stored(headless)


# Measured in a process of its own, so the peak is this call's and not an earlier test's.
_BOMBS = """
import json, resource
from pipelines.decode import ImageDecodeError, source_array
from tests.support import png_header_only
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
said = []
for side in (10000, 40000):
    try:
        source_array(png_header_only(side, side))
        said.append("decoded")
    except ImageDecodeError as err:
        said.append(str(err))
print(json.dumps({"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "said": said}))
"""


@pytest.mark.fault("decompression bombs: PNG headers of 10000 x 10000 (over the project's limit, under PIL's) and "
                   "40000 x 40000 (over both; 4.8 GB decoded)", inputs=2,
                   outcome="both refused as 'too large' from their headers; the process's peak memory grows < 50 MiB")
def test_the_default_limit_refuses_real_bombs_without_allocating_them():
    done = subprocess.run([sys.executable, "-c", _BOMBS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    project, pil = result["said"]
    assert project.startswith("too large: 10000x10000 px is over the limit"), project  # the project's own check
    assert pil.startswith("too large:"), pil  # PIL's bomb check answers first at this size
    assert result["grew_kib"] < 50 * 1024, result


def test_decode_on_device_falls_back_to_cpu_with_one_warning(caplog, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine may have a GPU one day
    monkeypatch.setattr(decode, "_warned_cpu_decode", False)
    src = [_picture(24, 40) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="pipelines.decode"):
        first = decode.decode_jpeg_batch([_encode(p, "JPEG") for p in src], "cuda")
        decode.decode_jpeg_batch([_encode(src[0], "JPEG")], "cuda")
    assert sum("CUDA is not available" in r.message for r in caplog.records) == 1
    assert [tuple(t.shape) for t in first] == [(3, 24, 40)] * 3 and first[0].device.type == "cpu"
    assert np.array_equal(first[0].numpy(), decode_stored(_encode(src[0], "JPEG")))
