"""The built-in demo dataset: generated shapes, written as real JPEG and PNG files.

Six classes of filled shapes at random positions and sizes on textured backgrounds of random
colour. By default the shape's colour is random too, so only the shape tells the class. With
`class_hues` each class paints its shapes in its own band of hues, and neighbouring bands overlap
(as a class of real photos has typical colours that other classes share): colour is a partial cue
and the shape must do the rest. AlexNet at 64 px learns the shape-only version slowly (no better
than chance for its first ~100 steps from scratch), which a 3-minute CPU demo cannot afford.
Nothing is downloaded: the same seed always writes the same files.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "hstripes", "vstripes")


# With class_hues: class k's hues are centred at k * 360 / classes degrees, +- this share of the
# spacing between centres (0.6: each band shares a third of its width with its two neighbours).
HUE_BAND = 0.6


def _colour(rng: np.random.Generator, hue: tuple[float, float] | None = None) -> tuple[int, int, int]:
    """A random RGB colour; with `hue` = (centre, half-width) in degrees, one of that band of hues
    at a saturation and value high enough for the hue to show."""
    if hue is None:
        return tuple(int(c) for c in rng.integers(0, 256, size=3))
    h = ((hue[0] + rng.uniform(-hue[1], hue[1])) % 360) / 360
    return tuple(int(c * 255) for c in colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)))


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


def render(name: str, size: int | tuple[int, int], rng: np.random.Generator,
           hue: tuple[float, float] | None = None) -> Image.Image:
    """One image of class `name`: `size` x `size` RGB, or (width, height). The shape spans 44-76%
    of the shorter side, anywhere in the image; its colour is random, or from the band `hue`
    (centre, half-width in degrees)."""
    width, height = (size, size) if isinstance(size, int) else size
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    fill = _colour(rng, hue)
    while np.abs(np.array(fill) - base).sum() < 120:  # keep the shape visible against the background
        fill = _colour(rng, hue)
    _draw_shape(draw, name, (cx - r, cy - r, cx + r, cy + r), fill, rng)
    return img


def write_demo_images(root: Path, per_class: int = 120, size: int = 72, seed: int = 0,
                      classes: tuple[str, ...] = CLASSES, sizes: tuple[int, int] | None = None,
                      class_hues: bool = False) -> Path:
    """Write ROOT/<class>/<i>.{jpg,png}; alternate formats so both decoders are exercised. Images are
    `size` px squares, or with `sizes=(lo, hi)` each side drawn from lo..hi px (photos are rarely
    square, and rarely the size a recipe trains at). `class_hues`: see the module docstring."""
    rng = np.random.default_rng(seed)
    spacing = 360 / len(classes)
    for k, name in enumerate(classes):
        hue = (k * spacing, HUE_BAND * spacing) if class_hues else None
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size if sizes is None else tuple(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
            img = render(name, shape, rng, hue)
            if i % 2:
                img.save(folder / f"{name}-{i:04d}.png", compress_level=1)
            else:
                img.save(folder / f"{name}-{i:04d}.jpg", quality=92)
    return root
