"""Enumerate a source dataset into (path, class name, split) items, before any decoding.

Sources:
- image folder: `ROOT/<class>/<file>`, or ImageNet-style `ROOT/train/<class>/...` +
  `ROOT/val/<class>/...` (the existing split is kept);
- manifest: a CSV or Parquet file with `path` and `label` columns (and an optional `split`
  column, train|val); relative paths are relative to the manifest's folder;
- CIFAR-10/100 python-version batches (see `pipelines.ingest.cifar`).
A folder or a manifest may also be a URI (s3://bucket/prefix, see `pipelines.storage`); then the
items are URIs too, read by the ingest tasks themselves. CIFAR batches must be local.
Files that cannot be images (other extensions, not regular files) are returned as rejects,
not dropped. Problems with the source as a whole are `UserError`s.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.errors import UserError
from pipelines.images import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES
from pipelines.ingest import cifar
from pipelines.ingest.listing import Item, Listing
from pipelines.redaction import redact

SOURCE_TYPES = ("folder", "manifest", "cifar")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


def read_source(path: str) -> bytes:
    """The bytes of one item: the file's content, or a CIFAR image as PPM. Raises OSError."""
    if cifar.is_ref(path):
        return cifar.read_image(path)
    # Regular files only (a FIFO would block forever, a device could be endless), and capped.
    return storage.read_bytes(storage.locate(path), limit=MAX_IMAGE_BYTES)


def detect_source_type(source: str | Path) -> str:
    """folder | manifest | cifar, from what is at `source`; UserError if nothing is there."""
    if storage.is_uri(source):

        loc = storage.locate(source)
        kind = storage.file_type(loc)
        if kind == pyarrow.fs.FileType.NotFound:
            raise UserError(f"source {loc} does not exist")
        if kind == pyarrow.fs.FileType.File and Path(loc.path).suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        if kind == pyarrow.fs.FileType.Directory:
            return "folder"
        raise UserError(f"source {loc}: not an image folder or a manifest ({', '.join(MANIFEST_SUFFIXES)}); "
                        "CIFAR batches must be local")
    path = Path(source)
    if not path.exists():
        raise UserError(f"source {path} does not exist")
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return "manifest"
    if cifar.looks_like_cifar(path):
        return "cifar"
    if path.is_dir():
        return "folder"
    raise UserError(f"source {path} is a file that is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) "
                    f"nor a CIFAR batch ({', '.join(cifar.TRAIN_NAMES + cifar.TEST_NAMES)}); use --source-type")


def list_source(source: str | Path, source_type: str | None = None) -> Listing:
    """Enumerate `source`, auto-detecting its type unless `source_type` forces one."""
    if source_type is not None and source_type not in SOURCE_TYPES:
        raise UserError(f"--source-type {source_type!r}: expected one of {', '.join(SOURCE_TYPES)}")
    kind = source_type or detect_source_type(source)
    if storage.is_uri(source):
        if kind == "cifar":
            raise UserError(f"source {source}: CIFAR batches must be local files (copy them first)")
        return _list_remote_folder(source) if kind == "folder" else list_manifest(source)
    return {"folder": list_image_folder, "manifest": list_manifest, "cifar": cifar.list_cifar}[kind](source)


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _file_problem(f: Path) -> str | None:
    """Why `f` (a directory entry with an image extension) cannot be read, or None."""
    try:
        mode = os.stat(f).st_mode  # follows symlinks
    except OSError as err:
        return f"unreadable: {err.strerror or err}"  # e.g. a dangling symlink
    if stat.S_ISDIR(mode):
        return "unreadable: is a directory"
    if not stat.S_ISREG(mode):
        return "unreadable: not a regular file (FIFO, socket or device)"
    return None


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
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                entries = sorted(filenames) + [d for d in dirnames if Path(d).suffix.lower() in IMAGE_EXTENSIONS]
                for name in entries:
                    f = Path(dirpath) / name
                    if _is_hidden(f):
                        continue
                    if f.suffix.lower() not in IMAGE_EXTENSIONS:
                        rejects.append((str(f), f"not an image extension: {f.suffix or 'none'}"))
                    elif problem := _file_problem(f):
                        rejects.append((str(f), problem))
                    else:
                        items.append(Item(str(f), class_dir.name, split))
                        found += 1
            if not found:
                rejects.append((str(class_dir), "empty class folder: no images"))
    return _folder_listing(root, classes, items, rejects, has_splits)


def _list_remote_folder(root: str) -> Listing:
    """`list_image_folder` for a folder on an object store, from one recursive listing."""
    loc = storage.locate(root)
    entries = [(storage.relative(loc, e).split("/"), e.type == pyarrow.fs.FileType.Directory)
               for e in storage.listing(loc, recursive=True)]
    entries = [(parts, is_dir) for parts, is_dir in entries if not any(p.startswith(".") for p in parts)]
    tops = {parts[0] for parts, is_dir in entries if is_dir or len(parts) > 1}
    has_splits = "train" in tops and tops <= {"train", "val"}
    depth = 2 if has_splits else 1  # the class folder is parts[depth - 1]
    class_dirs = sorted({tuple(parts[:depth]) for parts, is_dir in entries
                         if len(parts) > depth or (is_dir and len(parts) == depth)})
    items: list[Item] = []
    rejects: list[tuple[str, str]] = []
    found = {key: 0 for key in class_dirs}
    for parts, is_dir in sorted(entries):
        if is_dir or len(parts) <= depth:
            continue
        uri = loc.join("/".join(parts)).uri
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            rejects.append((uri, f"not an image extension: {Path(parts[-1]).suffix or 'none'}"))
            continue
        items.append(Item(uri, parts[depth - 1], parts[0] if has_splits else None))
        found[tuple(parts[:depth])] += 1
    rejects += [(loc.join("/".join(key)).uri, "empty class folder: no images") for key, n in found.items() if not n]
    return _folder_listing(loc.uri, {key[-1] for key in class_dirs}, items, rejects, has_splits)


def _folder_listing(root, classes: set[str], items: list[Item], rejects: list, has_splits: bool) -> Listing:
    ordered = sorted(classes)
    if len(ordered) < 2:
        raise UserError(f"source {root}: found {len(ordered)} class folder(s); need at least 2 (ROOT/<class>/<image>)")
    if not items:
        raise UserError(f"source {root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return Listing(ordered, items, rejects, has_splits)


def _read_manifest(loc: storage.Location) -> dict[str, list]:
    try:
        data = storage.read_bytes(loc)
    except OSError as err:
        raise UserError(f"manifest {loc}: unreadable: {err}") from None
    if loc.path.lower().endswith(".csv"):
        try:
            reader = csv.DictReader(io.StringIO(data.decode(), newline=""))
            columns = {name.strip(): [] for name in (reader.fieldnames or [])}
            for row in reader:
                for key, value in row.items():
                    if key is not None and key.strip() in columns:
                        columns[key.strip()].append(value)
            return columns
        except (UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"manifest {loc}: unreadable CSV: {err}") from None

    try:
        return pq.read_table(pa.BufferReader(data)).to_pydict()
    except Exception as err:  # ArrowInvalid, OSError
        raise UserError(f"manifest {loc}: unreadable Parquet: {err}") from None


def _sort_key(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _split(splits: list | None, i: int, manifest, row: int) -> str | None:
    split = str(splits[i] or "").strip() or None if splits is not None else None
    if split not in (None, "train", "val"):
        raise UserError(f"manifest {manifest} row {row}: split {split!r}; expected train or val")
    return split


def _manifest_row(f: str, loc, manifest, row: int) -> str:
    """A row's path as ingest reads it. Rows name the manifest's own store only: relative keys or
    URIs on its bucket for a manifest on an object store (an absolute path there would read the
    ingest nodes' own disks), local paths (or file:// URIs) for a local one."""
    if f.startswith("file://"):
        f = urlsplit(f).path
    if not loc.local:
        store = "{0.scheme}://{0.netloc}".format(urlsplit(loc.uri))
        if storage.is_uri(f):
            if not f.startswith(store + "/"):
                raise UserError(f"manifest {manifest} row {row}: {redact(f)} is not on the manifest's own store "
                                f"({store})")
            return f
        if f.startswith("/"):
            raise UserError(f"manifest {manifest} row {row}: {f} is an absolute local path in a manifest on "
                            f"{store}; name objects relative to the manifest or by URI")
        return f
    if storage.is_uri(f):
        raise UserError(f"manifest {manifest} row {row}: {redact(f)} is a URI in a local manifest; put the "
                        "manifest on that store, or list local files")
    return f


def list_manifest(manifest: str | Path) -> Listing:
    """A CSV/Parquet manifest with `path,label` (+ optional `split`) -> Listing.

    Labels are class names (or integers, ordered numerically). A row naming a missing file is a
    UserError naming the row, like a missing column: a manifest is a list the user wrote."""
    loc = storage.locate(manifest)
    if not storage.is_file(loc):
        raise UserError(f"manifest {loc} does not exist" if not storage.exists(loc) else f"manifest {loc} is not a file")
    cols = _read_manifest(loc)
    for needed in ("path", "label"):
        if needed not in cols:
            raise UserError(f"manifest {manifest}: missing column {needed!r} (has: {', '.join(cols) or 'none'})")
    splits = cols.get("split")
    remote = not loc.local
    base = loc.uri.rsplit("/", 1)[0] if remote else Path(loc.path).resolve().parent
    items, rejects = [], []
    first = 2 if loc.path.lower().endswith(".csv") else 0  # CSV: line numbers a user sees (1 is the header)
    for i, (p, label) in enumerate(zip(cols["path"], cols["label"])):
        row = i + first
        if p is None or str(p).strip() == "" or label is None or str(label).strip() == "":
            raise UserError(f"manifest {manifest} row {row}: empty path or label")
        f = _manifest_row(str(p).strip(), loc, manifest, row)
        if storage.is_uri(f) or remote:
            # On an object store, a missing object is found when it is read: a reject, not a HEAD per row.
            items.append(Item(f if storage.is_uri(f) else f"{base}/{f}", str(label).strip(),
                              _split(splits, i, manifest, row)))
            continue
        f = Path(f) if Path(f).is_absolute() else Path(base) / f
        if not os.path.lexists(f):
            raise UserError(f"manifest {manifest} row {row}: file {f} does not exist")
        split = _split(splits, i, manifest, row)
        if problem := _file_problem(f):
            rejects.append((str(f), problem))
        else:
            items.append(Item(str(f), str(label).strip(), split))
    classes = sorted({it.label_name for it in items} | {str(l).strip() for l in cols["label"]}, key=_sort_key)
    if len(classes) < 2:
        raise UserError(f"manifest {manifest}: {len(classes)} distinct label(s); need at least 2")
    if not items:
        raise UserError(f"manifest {manifest}: no readable images listed")
    return Listing(classes, items, rejects, splits is not None)
