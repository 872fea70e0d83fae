"""The built-in demo: its dataset, generated shapes written as real JPEG and PNG files, and its run
(`run_demo`: generate -> ingest -> the training run of alexnet.run, tracked and registered).

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
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from alexnet.config import load_config
from alexnet.run import RunResult, new_run_name, run_training
from pipelines.ingest import IngestOptions, IngestSummary, ingest

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


DEMO_IMAGES_PER_CLASS = 250  # 6 classes
# Its own registered model (and `alexnet demo` its own work folder): the demo's model must never
# be the `alexnet@champion` that a user's own train, predict and evaluate default to.
DEMO_MODEL = "alexnet-demo"


def run_demo(workdir, *, images_per_class: int = DEMO_IMAGES_PER_CLASS, overrides: list[str] = (),
             ray_session: Callable[[], AbstractContextManager] = nullcontext) -> tuple[IngestSummary, RunResult]:
    """The whole path on generated data in `workdir` (a jobs.runtime.Workdir): its images (made
    once per size), the Parquet dataset (a second demo adds no shards) and a new, separately named
    MLflow run with a registered model. `overrides`: --set KEY=VALUE items for the demo recipe."""
    name = f"hue-shapes-{images_per_class}"  # a new generator or size is a new source and dataset
    dataset_dir = workdir.datasets / name
    cfg = load_config("demo", [f"data.path={dataset_dir}", f"run.register_as={DEMO_MODEL}", *overrides])
    source = workdir.root / "demo-images" / name
    if not source.is_dir():
        tmp = source.with_name(source.name + ".tmp")
        write_demo_images(tmp, per_class=images_per_class, size=cfg.data.resize, class_hues=True)
        tmp.rename(source)
    with ray_session():
        summary = ingest(source, dataset_dir, IngestOptions(resize=cfg.data.resize, val_fraction=0.2,
                                                            image_format="jpeg"))
        print(f"dataset {dataset_dir} version {summary.version}: {summary.added} images added, "
              f"{summary.already_present} already present, {len(summary.rejects)} rejected", flush=True)
        result = run_training(cfg, tracking_uri=workdir.tracking_uri, storage=str(workdir.runs),
                              run_name=new_run_name("demo"), model_dir=workdir.root / "models",
                              experiment="alexnet-demo", artifact_location=workdir.artifacts, source="alexnet demo")
    return summary, result
