"""The Parquet dataset format: its schema, its `dataset.json`, and the validating reader.

A dataset directory holds `dataset.json` and Parquet shards under `train/` and `val/`.
`dataset.json` is written last, atomically, and lists the shards: a shard it does not list is
not data (an interrupted ingest leaves only unlisted files, which the next ingest removes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import write_atomic
from pipelines.errors import UserError

SCHEMA_VERSION = 1
INFO_FILE = "dataset.json"
SPLITS = ("train", "val")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # sha256 of the encoded source bytes: stable across re-ingests
        ("image", pa.binary()),  # encoded JPEG/PNG bytes, or raw uint8 HxWx3 pixels
        ("label", pa.int32()),
        ("label_name", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source", pa.string()),  # the original path, for reports and debugging
    ]
)


@dataclass(frozen=True)
class DatasetInfo:
    """What `dataset.json` says; `path` is where it was read from (not stored)."""

    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    shards: dict[str, list[str]]  # split -> shard paths relative to the dataset directory
    pixel_mean: list[float]  # per RGB channel, on the 0-1 scale, training pixels
    pixel_std: list[float]
    pca_eigval: list[float]  # of the 3x3 RGB covariance (0-1 scale), descending
    pca_eigvec: list[list[float]]  # columns are eigenvectors, matching pca_eigval
    version: str  # fingerprint of (id, label, split) of every image: changes iff content does
    image_format: str  # jpeg | png | raw
    params: dict = field(default_factory=dict)  # how ingest was run
    pixel_moments: dict = field(default_factory=dict)  # running sums behind mean/std/PCA, for appends
    schema_version: int = SCHEMA_VERSION
    path: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def split_size(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def shard_paths(self, split: str) -> list[str]:
        return [os.path.join(self.path, rel) for rel in self.shards.get(split, [])]

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def write_info(directory: Path, info: DatasetInfo) -> None:
    """Replace `dataset.json` atomically: a reader sees the old one or the new one, whole."""
    write_atomic(Path(directory) / INFO_FILE, json.dumps(info.to_json(), indent=2))


def load_info(directory: str | os.PathLike) -> DatasetInfo:
    """Read `dataset.json` without touching the shards."""
    path = Path(directory) / INFO_FILE
    if not Path(directory).is_dir():
        raise UserError(f"dataset directory {directory} does not exist")
    if not path.is_file():
        raise UserError(f"{path}: missing; {directory} is not a dataset directory (run `alexnet ingest` first)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable dataset metadata: {err}") from err
    if not isinstance(raw, dict):
        raise UserError(f"{path}: malformed dataset metadata: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
    try:
        info = DatasetInfo(**raw, path=str(Path(directory).resolve()))
    except TypeError as err:
        raise UserError(f"{path}: malformed dataset metadata: {err}") from err
    if not isinstance(info.classes, list) or not all(isinstance(c, str) for c in info.classes):
        raise UserError(f"{path}: 'classes' must be a list of class names")
    if not isinstance(info.shards, dict) or set(info.shards) - set(SPLITS):
        raise UserError(f"{path}: 'shards' must map {' and '.join(SPLITS)} to shard lists")
    return info


def open_dataset(directory: str | os.PathLike) -> DatasetInfo:
    """Load and validate a dataset for training: every listed shard exists, has the schema's
    columns and types, and its labels lie inside the class list (from Parquet statistics, so
    this reads footers, not images)."""
    info = load_info(directory)
    if info.num_classes < 2:
        raise UserError(f"{Path(directory) / INFO_FILE}: needs at least 2 classes, has {info.num_classes}")
    if not info.shards.get("train"):
        raise UserError(f"{Path(directory) / INFO_FILE}: lists no train shards")
    for split in info.shards:
        rows = sum(_validate_shard(shard, info.num_classes) for shard in info.shard_paths(split))
        if rows != info.split_size(split):
            raise UserError(f"{Path(directory) / INFO_FILE}: counts say {info.split_size(split)} {split} images, "
                            f"its {split} shards hold {rows}")
    return info


def _validate_shard(shard: str, num_classes: int) -> int:
    """Check one shard's footer; return its row count."""
    try:
        meta = pq.ParquetFile(shard).metadata
    except FileNotFoundError:
        raise UserError(f"{shard}: listed in {INFO_FILE} but missing") from None
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"{shard}: not a readable Parquet file: {err}") from err
    schema = meta.schema.to_arrow_schema()
    for expected in SCHEMA:
        if expected.name not in schema.names:
            raise UserError(f"{shard}: missing column {expected.name!r}")
        actual = schema.field(expected.name).type
        if actual != expected.type and not (pa.types.is_large_binary(actual) and expected.type == pa.binary()):
            raise UserError(f"{shard}: column {expected.name!r} has type {actual}, expected {expected.type}")
    col = schema.names.index("label")
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            continue
        if stats.min < 0 or stats.max >= num_classes:
            raise UserError(
                f"{shard}: label values {stats.min}..{stats.max} outside the {num_classes} classes of {INFO_FILE}"
            )
    return meta.num_rows
