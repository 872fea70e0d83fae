"""`alexnet ingest`: a source image dataset -> a sharded, validated Parquet dataset directory.

Two passes over Ray Data, both spread over the cluster's CPUs:
1. hash: read each file's bytes -> content id (sha256). The driver drops duplicates and images
   the dataset already holds, so a re-run only processes what is new.
2. encode: each Ray Data block becomes one shard. The task decodes, validates, re-encodes and
   writes its own Parquet file into the destination, and returns only small per-image rows
   (id, split, reject reason, pixel moments). Image bytes never pass through the driver.
Shards go straight to `DEST/<split>/part-<run id>-<task id>.parquet`; the driver writes
`dataset.json` last (atomically): until then no reader sees the new shards, so an interrupted
ingest leaves nothing a reader takes for data. The whole run holds DEST's lock
(`pipelines.ingest.destination`), which also decides what may be cleaned up.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
import uuid
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from pipelines import images, storage
from pipelines.atomic import write_atomic
from pipelines.dataset import IMAGE_FORMATS, INFO_FILE, SCHEMA, SPLITS, DatasetInfo, write_info
from pipelines.decode import ImageDecodeError, is_jpeg, open_source
from pipelines.errors import UserError
from pipelines.ingest import cifar, destination, stats
from pipelines.ingest.destination import DUPLICATES_FILE, REJECTS_FILE
from pipelines.ingest.listing import Listing
from pipelines.ingest.lock import STALE_S
from pipelines.ingest.sources import list_source, read_source
from pipelines.shared_folder import check_shared

ROW_GROUP_MB = 32  # Parquet row group size: what a streaming reader holds in memory per file
FORMATS = IMAGE_FORMATS


@dataclass(frozen=True)
class IngestOptions:
    val_fraction: float = 0.1  # share of images (by id) put in val when the source has no split
    image_format: str = "jpeg"  # jpeg | png | raw (uint8 pixels at raw_size x raw_size)
    resize: int | None = 256  # shorter side in px after ingest; None keeps the source size
    raw_size: int = 256  # side in px of the square stored by --format raw
    quality: int = 90  # JPEG quality when re-encoding
    min_side: int = 32  # px, shorter side of the source image; smaller ones are rejected (CIFAR is 32)
    shard_mb: int = 256  # target shard size in MB
    strict: bool = False  # any reject fails the run

    def encoding(self) -> dict[str, object]:
        """The options that decide the stored bytes of an image, by their CLI names: part of the
        dataset version, and what an append must share with the dataset."""
        if self.image_format == "raw":
            return {"--format": "raw", "--raw-size": self.raw_size}
        enc: dict[str, object] = {"--format": self.image_format, "--resize": self.resize or 0}
        if self.image_format == "jpeg":
            enc["--quality"] = self.quality
        return enc

    def __post_init__(self) -> None:
        """Checked once, where the options are made: a bad value names its option."""
        if self.image_format not in FORMATS:
            raise UserError(f"--format {self.image_format!r}: expected one of {', '.join(FORMATS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction {self.val_fraction}: expected 0 <= fraction < 1")
        if self.resize is not None and self.resize < 8:
            raise UserError(f"--resize {self.resize}: expected at least 8 px")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality {self.quality}: expected 1..100")
        if self.shard_mb <= 0:
            raise UserError(f"--shard-mb {self.shard_mb}: expected a positive size")
        if self.raw_size < 8:
            raise UserError(f"--raw-size {self.raw_size}: expected at least 8 px")
        if self.min_side < 1:
            raise UserError(f"--min-side {self.min_side}: expected at least 1 px")


@dataclass(frozen=True)
class IngestSummary:
    path: str
    version: str  # the dataset's version after this run
    previous_version: str | None  # before it (None: a new dataset)
    added: int  # new images written
    duplicates: int  # files whose content another file of this run already had (kept once)
    already_present: int  # images the dataset already held (by content id)
    rejects: list[tuple[str, str]]  # (path, reason), also in DEST/rejects.csv
    new_shards: int
    counts: dict[str, dict[str, int]]  # split -> class -> images, whole dataset
    seconds: float

    @property
    def rejects_by_kind(self) -> dict[str, int]:
        return reject_kinds(self.rejects)


def split_for(image_id: str, val_fraction: float) -> str:
    """Deterministic split from the content id: an image never changes split when others arrive."""
    return "val" if int(image_id[:8], 16) / 2**32 < val_fraction else "train"


def _hash_batch(batch: dict) -> dict:
    ids, sizes, errors = [], [], []
    for path in batch["path"]:
        try:
            data = read_source(path)
            ids.append(hashlib.sha256(data).hexdigest())
            sizes.append(len(data))
            errors.append("")
        except OSError as err:
            ids.append("")
            sizes.append(0)
            errors.append(f"unreadable: {err.strerror or err}")
    return {"path": list(batch["path"]), "id": ids, "nbytes": sizes, "error": errors}


def _encode(data: bytes, opts: IngestOptions) -> tuple[bytes, int, int, np.ndarray]:
    """Source bytes -> (stored bytes, height, width, stored pixels). Raises ImageDecodeError."""
    target = opts.raw_size if opts.image_format == "raw" else opts.resize
    source = open_source(data, target)
    img, (w0, h0), mode, rotated = source.image, source.size, source.mode, source.rotated
    if min(w0, h0) < opts.min_side:
        raise ImageDecodeError(f"too small: {w0}x{h0} px, shorter side below --min-side {opts.min_side}")
    if opts.image_format == "raw":
        pixels = np.asarray(images.center_square(img, opts.raw_size), dtype=np.uint8)
        return pixels.tobytes(), opts.raw_size, opts.raw_size, pixels
    resized = images.resize_shorter_side(img, opts.resize) if opts.resize else img
    pixels = np.asarray(resized, dtype=np.uint8)
    if (opts.image_format == "jpeg" and resized is img and mode == "RGB" and not rotated
            and is_jpeg(data)):
        stored = data  # the source JPEG already fits: keep its bytes, no second lossy encode
    else:
        stored = images.encode(resized, opts.image_format, opts.quality)
    return stored, pixels.shape[0], pixels.shape[1], pixels


def _write_shard(rows: list[dict], path: str | Path | storage.Location) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    avg = max(1, table.nbytes // max(1, table.num_rows))
    row_group = int(min(4096, max(8, (ROW_GROUP_MB << 20) // avg)))  # a reader holds one row group at a time
    # Atomic and fsynced: dataset.json, written after every shard, never lists a partial one.
    write_atomic(path, lambda f: pq.write_table(table, f, row_group_size=row_group,
                                                compression="none" if avg > 2048 else "zstd"))


def _encode_and_write(batch: dict, *, opts: IngestOptions, dest: str, run_id: str) -> dict:
    """One block -> one shard per split under `dest`, named after this run; returns one small
    row per image."""
    out: dict[str, list] = {k: [] for k in ("id", "split", "label", "reject", "shard", "sum", "outer", "count")}
    shard_rows: dict[str, list[dict]] = {}
    shard_name = f"part-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
    for path, image_id, label, name, split in zip(batch["path"], batch["id"], batch["label"], batch["label_name"], batch["split"]):
        reject, s, o, c, shard = "", np.zeros(3), np.zeros((3, 3)), 0, ""
        try:
            stored, h, w, pixels = _encode(read_source(path), opts)
            shard_rows.setdefault(split, []).append(
                {"id": image_id, "image": stored, "label": int(label), "label_name": name, "height": h, "width": w, "source": path}
            )
            shard = f"{split}/{shard_name}"
            if split == "train":
                s, o, c = stats.moments(pixels)
        except ImageDecodeError as err:
            reject = str(err)
        except OSError as err:
            reject = f"unreadable: {err.strerror or err}"
        for key, value in zip(out, (image_id, split, int(label), reject, shard, s.tolist(), o.ravel().tolist(), c)):
            out[key].append(value)
    for split, rows in shard_rows.items():
        folder = storage.locate(dest).join(split)
        storage.make_dirs(folder)
        _write_shard(rows, folder.join(shard_name))
    return out


def _existing_rows(info: DatasetInfo | None) -> list[tuple[str, int, str]]:
    if info is None:
        return []
    rows = []
    for split in info.shards:
        for shard in info.shard_paths(split):
            with storage.open_input(shard) as f:
                t = pq.read_table(f, columns=["id", "label"])
            rows += [(i, l, split) for i, l in zip(t["id"].to_pylist(), t["label"].to_pylist())]
    return rows


def _fingerprint(rows: list[tuple[str, int, str]], classes: list[str], encoding: dict[str, object]) -> str:
    """The dataset version: a hash of the classes, how images are encoded, and every image's
    (id, label, split), so it changes iff the stored content does."""
    digest = hashlib.sha256(f"{classes}|{json.dumps(encoding, sort_keys=True)}\n".encode())
    for image_id, label, split in sorted(rows):
        digest.update(f"{image_id}:{label}:{split}\n".encode())
    return digest.hexdigest()[:16]


_ENCODING_PARAMS = {"image_format": "--format", "resize": "--resize", "quality": "--quality", "raw_size": "--raw-size"}


def _check_same_encoding(previous: DatasetInfo, opts: IngestOptions, dest) -> None:
    """Appending must encode as the dataset did: one dataset, one encoding (and one version rule).
    Options the previous run did not record in dataset.json's params are not compared."""
    recorded = {k: previous.params[k] for k in _ENCODING_PARAMS if k in previous.params}
    theirs = IngestOptions(**{**recorded, "image_format": previous.image_format}).encoding()
    known = {_ENCODING_PARAMS[k] for k in recorded} | {"--format"}
    for option, value in opts.encoding().items():
        if option in known and option in theirs and theirs[option] != value:
            raise UserError(f"{option} {value}: the dataset at {dest} was ingested with {option} {theirs[option]}; "
                            "appending would mix two encodings (use the same option, or a new destination)")


def ingest(source: str | os.PathLike, dest: str | os.PathLike, opts: IngestOptions = IngestOptions(), *,
           source_type: str | None = None, progress: Callable[[str], None] | None = None,
           stale_lock_s: float = STALE_S, ray_session: Callable[[], AbstractContextManager] = nullcontext
           ) -> IngestSummary:
    """Ingest `source` (folder, manifest or CIFAR; auto-detected unless `source_type`) into `dest`
    (created, or appended to), holding `dest`'s lock throughout (a concurrent ingest into it is a
    UserError). Either may be a local path or a URI (s3://...). A bad source, a destination that
    is not a dataset and one another ingest is writing are refused first; then `ray_session()` is
    entered (the caller's Ray: jobs.runtime), for the passes that run on Ray.
    `progress` gets one-line updates; `stale_lock_s`: see `pipelines.ingest.lock`."""
    say = progress or (lambda message: None)
    start = time.time()
    source = storage.absolute(source)  # its files are read by Ray tasks, wherever they run
    listing = list_source(source, source_type)
    dest = destination.preflight(dest, stale_lock_s)
    with ray_session():
        # Tasks on every node read SOURCE and write DEST: node-local folders on a cluster are refused
        # now, not found out as a partial dataset.
        check_shared(str(source), "SOURCE")
        check_shared(str(dest), "DEST")
        with destination.claim(dest, stale_lock_s) as claim:
            return _ingest(source, claim, opts, listing, source_type, say, start)


def _ingest(source, claim: destination.Claim, opts: IngestOptions, listing: Listing, source_type: str | None,
            say: Callable[[str], None], start: float) -> IngestSummary:
    """The passes in order: checks, hashing and de-duplication, encoding, statistics, commit.
    Until the commit nothing a reader sees has changed; `claim` removes this run's shards if a
    pass raises (see pipelines.ingest.destination)."""
    dest, previous = claim.dest, claim.previous
    _check_append(previous, listing, opts, dest)
    rejects = list(listing.rejects)
    _check_strict(opts, rejects)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    existing = _existing_rows(previous)
    todo, duplicates, already, total_bytes = _hash_pass(source, listing, {r[0] for r in existing}, opts, cpus,
                                                        rejects, say)
    _check_strict(opts, rejects)
    new_rows, new_shards, moments = _encode_pass(todo, total_bytes, claim, opts, cpus, rejects, say,
                                                 f"({already} already present, {len(duplicates)} duplicates)")
    _check_strict(opts, rejects)
    info = _dataset_info(source, source_type, listing, opts, previous, existing + new_rows, new_rows, new_shards,
                         _add_moments(_previous_moments(previous), moments), rejects)
    _commit(claim, info, new_shards, rejects, duplicates)
    return IngestSummary(dest.uri, info.version, previous.version if previous else None, len(new_rows),
                         len(duplicates), already, rejects, sum(len(v) for v in new_shards.values()), info.counts,
                         time.time() - start)


def _check_append(previous: DatasetInfo | None, listing: Listing, opts: IngestOptions, dest) -> None:
    """An append keeps the dataset's classes and encoding."""
    if previous is None:
        return
    if previous.classes != listing.classes:
        raise UserError(
            f"source classes {listing.classes} differ from the dataset's {previous.classes} in {dest.join(INFO_FILE)}"
        )
    _check_same_encoding(previous, opts, dest)


def _check_strict(opts: IngestOptions, rejects: list[tuple[str, str]]) -> None:
    if opts.strict and rejects:
        path, reason = rejects[0]
        raise UserError(f"--strict: {len(rejects)} file(s) rejected, first: {path}: {reason}")


def _dataset_info(source, source_type: str | None, listing: Listing, opts: IngestOptions,
                  previous: DatasetInfo | None, all_rows: list[tuple[str, int, str]], new_rows: list,
                  new_shards: dict[str, list[str]], moments: dict, rejects: list) -> DatasetInfo:
    """The statistics pass: counts, pixel statistics and version of the dataset after this run."""
    if not all_rows:
        raise UserError(f"source {source}: every image was rejected ({_reasons(rejects)})")
    if moments["count"] == 0:
        raise UserError(f"source {source}: no training images left after the val split (--val-fraction {opts.val_fraction})")
    counts = {s: {c: 0 for c in listing.classes} for s in SPLITS}
    for _, label, split in all_rows:
        counts[split][listing.classes[label]] += 1
    shards = {s: (previous.shards.get(s, []) if previous else []) + new_shards[s] for s in SPLITS}
    src = str(source) if storage.is_uri(source) else str(Path(source).resolve())
    return DatasetInfo(
        classes=listing.classes,
        counts=counts,
        shards=shards,
        **stats.finalize(np.array(moments["sum"]), np.array(moments["outer"]), moments["count"]),
        # Nothing added: the content, and so the version, is the one already there (whichever
        # version of this code computed it).
        version=previous.version if previous and not new_rows else _fingerprint(all_rows, listing.classes,
                                                                                 opts.encoding()),
        image_format=opts.image_format,
        params={**asdict(opts), "source": src, "source_type": source_type or _detected(source, listing)},
        pixel_moments=moments,
    )


def _commit(claim: destination.Claim, info: DatasetInfo, new_shards: dict[str, list[str]],
            rejects: list[tuple[str, str]], duplicates: list[tuple[str, str]]) -> None:
    """dataset.json names the new shards: from here on readers see them. This run's reports are
    written after it, so a kill in between leaves the previous ones."""
    claim.commit(lambda: write_info(claim.dest, info), new_shards)
    _write_csv(claim.dest.join(REJECTS_FILE), ["path", "reason"], sorted(rejects))
    _write_csv(claim.dest.join(DUPLICATES_FILE), ["path", "same_content_as"], sorted(duplicates))


def _hash_pass(source, listing: Listing, existing_ids: set[str], opts: IngestOptions, cpus: int,
               rejects: list, say) -> tuple[list[dict], list[tuple[str, str]], int, int]:
    """Pass 1: content ids of every listed file -> (new images to encode, duplicates, images
    already in the dataset, bytes to encode). Unreadable files are appended to `rejects`."""
    # Few, large blocks: the work per file is small, Ray's per-task cost is not.
    say(f"hashing {len(listing.items)} files from {source} on {cpus} CPUs")
    n_blocks = min(len(listing.items), max(2 * cpus, math.ceil(len(listing.items) / 20000)))
    hashed = ray.data.from_items([{"path": it.path} for it in listing.items], override_num_blocks=n_blocks)
    hashed = hashed.map_batches(_hash_batch, batch_size=None).to_pandas()
    by_path = {it.path: it for it in listing.items}
    label_of = {name: i for i, name in enumerate(listing.classes)}
    first_path: dict[str, str] = {}
    todo, duplicates, already, total_bytes = [], [], 0, 0
    for path, image_id, nbytes, error in hashed.itertuples(index=False):
        if error:
            rejects.append((path, error))
        elif image_id in existing_ids:
            already += 1
        elif image_id in first_path:
            duplicates.append((path, first_path[image_id]))  # same bytes under another name: kept once
        else:
            first_path[image_id] = path
            item = by_path[path]
            split = item.split or split_for(image_id, opts.val_fraction)
            todo.append({"path": path, "id": image_id, "label": label_of[item.label_name],
                         "label_name": item.label_name, "split": split})
            total_bytes += nbytes
    # Shards in content-id order, not the source's (class folder by class folder): a row group
    # then holds every class, so a training epoch that streams a few row groups at a time, with
    # a bounded shuffle buffer, still mixes classes within each batch. The order is deterministic.
    todo.sort(key=lambda t: t["id"])
    return todo, duplicates, already, total_bytes


def _encode_pass(todo: list[dict], total_bytes: int, claim: destination.Claim, opts: IngestOptions, cpus: int,
                 rejects: list, say, note: str) -> tuple[list[tuple[str, int, str]], dict[str, list[str]], dict]:
    """Pass 2: encode `todo` and write this run's shards into the destination -> (new rows,
    split -> new shard paths, pixel moments of the new train images). Rejects are appended."""
    new_rows: list[tuple[str, int, str]] = []
    new_shards: dict[str, set[str]] = {s: set() for s in SPLITS}
    moments = {"sum": [0.0] * 3, "outer": [0.0] * 9, "count": 0}
    if not todo:
        return new_rows, {s: [] for s in SPLITS}, moments
    path_of = {t["id"]: t["path"] for t in todo}
    rows_per_shard = max(1, (opts.shard_mb << 20) // max(1, total_bytes // len(todo)))
    # At least 2 blocks per CPU so small datasets still use every core.
    n_blocks = max(math.ceil(len(todo) / rows_per_shard), min(len(todo), 2 * cpus))
    say(f"encoding {len(todo)} new images {note} into ~{n_blocks} shards")
    result = (
        ray.data.from_items(todo, override_num_blocks=n_blocks)
        .map_batches(_encode_and_write, batch_size=None,
                     fn_kwargs={"opts": opts, "dest": claim.dest.uri, "run_id": claim.run_id})
        .to_pandas()
    )
    for row in result.itertuples(index=False):
        if row.reject:
            rejects.append((path_of[row.id], row.reject))
            continue
        new_rows.append((row.id, int(row.label), row.split))
        new_shards[row.split].add(row.shard)
        if row.split == "train":
            moments = _add_moments(moments, {"sum": row.sum, "outer": row.outer, "count": row.count})
    return new_rows, {s: sorted(v) for s, v in new_shards.items()}, moments


def _add_moments(a: dict, b: dict) -> dict:
    return {"sum": np.add(a["sum"], b["sum"]).tolist(), "outer": np.add(a["outer"], b["outer"]).tolist(),
            "count": int(a["count"]) + int(b["count"])}


def _detected(source, listing: Listing) -> str:
    if listing.items and "#" in listing.items[0].path and cifar.is_ref(listing.items[0].path):
        return "cifar"
    return "manifest" if storage.is_file(storage.locate(source)) else "folder"


def _reasons(rejects: list[tuple[str, str]]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in reject_kinds(rejects).items()) or "no images"


def reject_kinds(rejects: list[tuple[str, str]]) -> dict[str, int]:
    """Reject reasons grouped by their kind (the text before the first colon), most common first."""
    kinds = Counter(reason.split(":", 1)[0] for _, reason in rejects)
    return dict(kinds.most_common())


def _previous_moments(previous: DatasetInfo | None) -> dict:
    if previous and previous.pixel_moments:
        return dict(previous.pixel_moments)
    return {"sum": [0.0] * 3, "outer": [0.0] * 9, "count": 0}


def _write_csv(path: storage.Location, header: list[str], rows) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
