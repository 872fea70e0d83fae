"""Enumerate a source dataset into (path, class name, split) items, before any decoding.

Layouts: `ROOT/<class>/<file>`, and ImageNet-style `ROOT/train/<class>/...` + `ROOT/val/<class>/...`
(the existing split is kept). Files with other extensions are returned as rejects, not dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError
from pipelines.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Item:
    path: str
    label_name: str
    split: str | None  # None: ingest assigns it from the image's id


@dataclass(frozen=True)
class Listing:
    classes: list[str]  # sorted; the label of a class is its index here
    items: list[Item]
    rejects: list[tuple[str, str]]  # (path, reason) found while listing
    has_splits: bool


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def list_image_folder(root: str | Path) -> Listing:
    root = Path(root)
    if not root.exists():
        raise UserError(f"source {root} does not exist")
    if not root.is_dir():
        raise UserError(f"source {root} is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    names = {p.name for p in subdirs}
    has_splits = "train" in names and names <= {"train", "val"}
    split_dirs = [(root / s, s) for s in ("train", "val") if (root / s).is_dir()] if has_splits else [(root, None)]

    classes: set[str] = set()
    items: list[Item] = []
    rejects: list[tuple[str, str]] = []
    for split_root, split in split_dirs:
        for class_dir in sorted(p for p in split_root.iterdir() if p.is_dir() and not _is_hidden(p)):
            classes.add(class_dir.name)
            found = 0
            for f in sorted(class_dir.rglob("*")):
                if f.is_dir() or _is_hidden(f):
                    continue
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    items.append(Item(str(f), class_dir.name, split))
                    found += 1
                else:
                    rejects.append((str(f), f"not an image extension ({f.suffix or 'none'})"))
            if not found:
                rejects.append((str(class_dir), "class folder has no images"))
    ordered = sorted(classes)
    if len(ordered) < 2:
        raise UserError(f"source {root}: found {len(ordered)} class folder(s); need at least 2 (ROOT/<class>/<image>)")
    if not items:
        raise UserError(f"source {root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return Listing(ordered, items, rejects, has_splits)
