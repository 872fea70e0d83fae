"""Pictures and tables of a run for MLflow: confusion matrix, per-class accuracy, a sample grid.

Pure functions of arrays (numpy in, files out), and `write_report`, which lays them out as the
run's artifacts (alexnet.track.publish uploads them); computing the predictions is predict.py's job.
matplotlib is imported only to draw the confusion matrix: it is slow to import and only the
report needs it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.atomic import write_atomic_dir
from pipelines.read.loader import train_sample


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[true, predicted] = count."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def per_class_rows(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per class: images, correct, accuracy (recall) and precision."""
    rows = []
    for i, name in enumerate(classes):
        total, predicted = int(cm[i].sum()), int(cm[:, i].sum())
        rows.append({"class": name, "label": i, "images": total, "correct": int(cm[i, i]),
                     "accuracy": round(cm[i, i] / total, 4) if total else float("nan"),
                     "precision": round(cm[i, i] / predicted, 4) if predicted else float("nan")})
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["class"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def confusion_png(cm: np.ndarray, classes: list[str], path: str | Path, title: str = "val confusion matrix") -> Path:
    import matplotlib  # deferred: slow to import, needed only here

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    n = len(classes)
    size = max(4.0, min(0.45 * n + 2, 40.0))
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(cm, cmap="Blues")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} (accuracy {np.trace(cm) / max(1, cm.sum()):.3f})")
        if n <= 50:  # beyond that the labels are unreadable; the CSV has them
            ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
            ax.set_yticks(range(n), classes, fontsize=8)
        if n <= 20:
            for (i, j), count in np.ndenumerate(cm):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > cm.max() / 2 else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def sample_grid(images: np.ndarray, labels: list[int], classes: list[str], path: str | Path,
                columns: int = 8, scale: int = 2) -> Path:
    """uint8 NCHW images (what the network sees, before normalisation) -> one captioned PNG."""
    n, _, h, w = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    cell_w, cell_h = w * scale, h * scale + 14
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for k in range(n):
        tile = Image.fromarray(np.ascontiguousarray(images[k].transpose(1, 2, 0))).resize((cell_w, h * scale), Image.NEAREST)
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        grid.paste(tile, (x, y))
        draw.text((x + 2, y + h * scale + 1), classes[int(labels[k])][:cell_w // 6], fill="black")
    grid.save(path, format="PNG")
    return Path(path)


SAMPLE_GRID_IMAGES = 32  # augmented training crops shown in samples/train_augmented.png


def write_report(directory: str | Path, info, preset, scores, labels: np.ndarray, preds: np.ndarray, *,
                 ten_crop: bool) -> Path:
    """The run's report as files under `directory`, laid out as its MLflow artifacts:
    eval/confusion_matrix.png, eval/per_class_accuracy.csv and eval/val_scores.json for the val
    split (`scores`, `labels`, `preds` from alexnet.serve.predict.evaluate, `ten_crop` as scored),
    samples/train_augmented.png (training crops augmented by `preset`, the run's).
    Written to a temporary sibling first: `directory` is complete or absent."""

    def fill(folder: str) -> None:
        tmp = Path(folder)
        (tmp / "eval").mkdir()
        (tmp / "samples").mkdir()
        cm = confusion_matrix(labels, preds, info.num_classes)
        confusion_png(cm, info.classes, tmp / "eval" / "confusion_matrix.png")
        (tmp / "eval" / "per_class_accuracy.csv").write_text(rows_to_csv(per_class_rows(cm, info.classes)))
        (tmp / "eval" / "val_scores.json").write_text(json.dumps(
            {"top1": scores.top1, "top5": scores.top5, "images": scores.images, "ten_crop": ten_crop,
             "dataset_version": info.version, "confusion_matrix": cm.tolist(), "classes": info.classes}, indent=2))
        sample = train_sample(info, preset, SAMPLE_GRID_IMAGES)
        sample_grid(np.asarray(sample["image"], dtype=np.uint8), [int(y) for y in sample["label"]],
                    info.classes, tmp / "samples" / "train_augmented.png")

    directory = Path(directory)
    write_atomic_dir(directory, fill)
    return directory
