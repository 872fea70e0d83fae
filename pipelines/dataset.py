"""The Parquet dataset format: its schema, its `dataset.json`, and the validating reader.

A dataset directory holds `dataset.json` and Parquet shards under `train/` and `val/`.
`dataset.json` is written last, atomically, and lists the shards: a shard it does not list is
not data (an interrupted ingest leaves only unlisted files, which the next ingest removes).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.atomic import write_atomic
from pipelines.errors import UserError
from pipelines.storage import Location

SCHEMA_VERSION = 1
INFO_FILE = "dataset.json"
SPLITS = ("train", "val")
IMAGE_FORMATS = ("jpeg", "png", "raw")
# The largest row group a reader accepts: a work unit reads a whole one into a Ray task's memory.
# Ingest writes ~32 MB groups (pipelines.ingest.passes.ROW_GROUP_MB), at most 4,096 rows each.
MAX_ROW_GROUP_BYTES = 512 * 1024 * 1024

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


def write_info(directory: str | os.PathLike | Location, info: DatasetInfo) -> None:
    """Replace `dataset.json` atomically: a reader sees the old one or the new one, whole."""
    loc = directory if isinstance(directory, Location) else storage.locate(directory)
    write_atomic(loc.join(INFO_FILE), json.dumps(info.to_json(), indent=2))


def load_info(directory: str | os.PathLike) -> DatasetInfo:
    """Read and check `dataset.json` (a local folder or a URI) without touching the shards."""
    loc = storage.locate(directory)
    path = loc.join(INFO_FILE)
    if not storage.is_file(path):
        if not storage.exists(loc):
            raise UserError(f"dataset directory {loc} does not exist")
        raise UserError(f"{path}: missing; {loc} is not a dataset directory (run `alexnet ingest` first)")
    try:
        raw = json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable dataset metadata: {err}") from err
    if not isinstance(raw, dict):
        raise UserError(f"{path}: malformed dataset metadata: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
    try:
        info = DatasetInfo(**raw, path=loc.uri)
    except TypeError as err:
        raise UserError(f"{path}: malformed dataset metadata: {err}") from err
    check_fields(info, str(path))
    return info


def _bad(where: str, name: str, expected: str, value) -> UserError:
    shown = json.dumps(value)
    return UserError(f"{where}: field {name!r}: expected {expected}, got {shown[:120]}")


def _numbers(value, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _relative_path(rel) -> bool:
    """A shard path inside the dataset folder: relative, no `..`, no scheme, no backslash."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "://" in rel or rel.startswith(("/", "~")):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def check_fields(info: DatasetInfo, where: str) -> None:
    """Every field a reader relies on, each refused with one line naming the file and field."""
    classes = info.classes
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise _bad(where, "classes", "a list of distinct class names", classes)
    if not isinstance(info.counts, dict) or set(info.counts) - set(SPLITS) or not all(
            isinstance(per, dict) and set(per) <= set(classes) and all(_count(n) for n in per.values())
            for per in info.counts.values()):
        raise _bad(where, "counts", f"{{split: {{class: images >= 0}}}} for splits {'/'.join(SPLITS)} "
                                    "and the listed classes", info.counts)
    if not isinstance(info.shards, dict) or set(info.shards) - set(SPLITS) \
            or not all(isinstance(v, list) for v in info.shards.values()):
        raise _bad(where, "shards", f"{{split: [shard paths]}} for splits {'/'.join(SPLITS)}", info.shards)
    for split, rels in info.shards.items():
        for rel in rels:
            if not _relative_path(rel):
                raise _bad(where, "shards", "paths relative to the dataset folder (no '..', not absolute)", rel)
        if len(set(rels)) != len(rels):
            raise _bad(where, "shards", "each shard listed once", rels)
    for name, n, positive in (("pixel_mean", 3, False), ("pixel_std", 3, True), ("pca_eigval", 3, False)):
        value = getattr(info, name)
        if not _numbers(value, n) or any(v <= 0 if positive else v < 0 for v in value):
            raise _bad(where, name, f"{n} finite numbers{', each > 0' if positive else ', each >= 0'} (RGB)", value)
    if not isinstance(info.pca_eigvec, list) or len(info.pca_eigvec) != 3 or not all(_numbers(r, 3) for r in info.pca_eigvec):
        raise _bad(where, "pca_eigvec", "a 3x3 matrix of finite numbers", info.pca_eigvec)
    if not isinstance(info.version, str) or not info.version:
        raise _bad(where, "version", "a non-empty string", info.version)
    if info.image_format not in IMAGE_FORMATS:
        raise _bad(where, "image_format", " or ".join(IMAGE_FORMATS), info.image_format)
    if not isinstance(info.params, dict):
        raise _bad(where, "params", "an object", info.params)
    m = info.pixel_moments
    if not isinstance(m, dict) or (m and not (_numbers(m.get("sum"), 3) and _numbers(m.get("outer"), 9)
                                              and _count(m.get("count")))):
        raise _bad(where, "pixel_moments", "{sum: 3 numbers, outer: 9 numbers, count: pixels >= 0}", m)


def open_dataset(directory: str | os.PathLike) -> DatasetInfo:
    """Load and validate a dataset for training: every listed shard exists, has the schema's
    columns and types, and its labels lie inside the class list (from Parquet statistics, so
    this reads footers, not images; a row group without them has its label column read)."""
    info = load_info(directory)
    where = storage.locate(directory).join(INFO_FILE)
    if info.num_classes < 2:
        raise UserError(f"{where}: needs at least 2 classes, has {info.num_classes}")
    if not info.shards.get("train"):
        raise UserError(f"{where}: lists no train shards")
    for split in SPLITS:
        rows = sum(_validate_shard(shard, info.num_classes) for shard in info.shard_paths(split))
        if rows != info.split_size(split):
            raise UserError(f"{where}: counts say {info.split_size(split)} {split} images, "
                            f"its {split} shards hold {rows}")
    return info


def _validate_shard(shard: str, num_classes: int) -> int:
    """Check one shard's footer (and labels); return its row count."""
    try:
        file = pq.ParquetFile(storage.open_input(shard))
        meta = file.metadata
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
        size = meta.row_group(rg).total_byte_size
        if size > MAX_ROW_GROUP_BYTES:
            raise UserError(f"{shard}: row group {rg} holds {size >> 20} MiB, over the {MAX_ROW_GROUP_BYTES >> 20} MiB "
                            "a reader takes into memory at once; re-ingest it (alexnet ingest writes ~32 MB groups)")
        stats = meta.row_group(rg).column(col).statistics
        if stats is not None and stats.has_min_max:
            low, high = stats.min, stats.max
        else:  # written without statistics: read this row group's labels (one small column)

            labels = file.read_row_group(rg, columns=["label"]).column("label")
            if labels.null_count:
                raise UserError(f"{shard}: column 'label' has missing values")
            bounds = pc.min_max(labels).as_py()
            low, high = bounds["min"], bounds["max"]
            if low is None:
                continue
        if low < 0 or high >= num_classes:
            raise UserError(
                f"{shard}: label values {low}..{high} outside the {num_classes} classes of {INFO_FILE}"
            )
    return meta.num_rows
