"""The built-in demo dataset: generated shapes, written as real JPEG and PNG files.

Six classes of filled shapes at random positions, sizes and colours on textured backgrounds;
learnable by a small network in a few CPU epochs, yet not trivially (colour carries no signal).
Nothing is downloaded: the same seed always writes the same files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "hstripes", "vstripes")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[float, float, float, float], fill, rng) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        angle = rng.uniform(0, math.pi / 2)
        pts = [(cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2)) for k in range(4)]
        draw.polygon(pts, fill=fill)
    elif name == "triangle":
        angle = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(pts, fill=fill)
    elif name == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif name in ("hstripes", "vstripes"):
        step = max(3, int(r / 2))
        for k in range(int(-r), int(r), step * 2):
            if name == "hstripes":
                draw.rectangle((x0, cy + k, x1, cy + k + step - 1), fill=fill)
            else:
                draw.rectangle((cx + k, y0, cx + k + step - 1, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {name!r}")


def render(name: str, size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One image of class `name`: `size` x `size` RGB, or (width, height). The shape spans 44-76%
    of the shorter side, anywhere in the image."""
    width, height = (size, size) if isinstance(size, int) else size
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    fill = _colour(rng)
    while np.abs(np.array(fill) - base).sum() < 120:  # keep the shape visible against the background
        fill = _colour(rng)
    _draw_shape(draw, name, (cx - r, cy - r, cx + r, cy + r), fill, rng)
    return img


def write_demo_images(root: Path, per_class: int = 120, size: int = 72, seed: int = 0,
                      classes: tuple[str, ...] = CLASSES, sizes: tuple[int, int] | None = None) -> Path:
    """Write ROOT/<class>/<i>.{jpg,png}; alternate formats so both decoders are exercised. Images are
    `size` px squares, or with `sizes=(lo, hi)` each side drawn from lo..hi px (photos are rarely
    square, and rarely the size a recipe trains at)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size if sizes is None else tuple(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
            img = render(name, shape, rng)
            if i % 2:
                img.save(folder / f"{name}-{i:04d}.png", compress_level=1)
            else:
                img.save(folder / f"{name}-{i:04d}.jpg", quality=92)
    return root
