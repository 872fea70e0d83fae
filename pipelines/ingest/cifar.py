"""CIFAR-10 / CIFAR-100 "python version" batch files, read without executing arbitrary code.

The files are pickles (a dict of `data` uint8 N x 3072, `labels` or `fine_labels`, `filenames`),
so they are loaded with a restricted unpickler that resolves only the few globals a numpy array
needs; any other global (`os.system`, `builtins.eval`, ...) is refused before it is called.
Even numpy's own globals are not handed out as they are: `ndarray(shape)` and `_reconstruct`
allocate arrays without initialising them, and a pickle that skips the step that fills one
would smuggle process memory into the dataset as pixels. The unpickler's stand-ins create only
empty arrays (what numpy's pickles start from), which the pickle's own state then fills; an
array never filled stays empty and fails validation. Files are size-checked before reading.

Each image becomes an item whose path is `BATCHFILE#INDEX`; `read_image` turns it into a binary
PPM (a fixed header + the raw pixels), so its content id depends on the pixels only.
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
from pathlib import Path

import numpy as np

from pipelines.errors import UserError
from pipelines.ingest.listing import Item, Listing

# CIFAR-10: data_batch_1..5 + test_batch + batches.meta; CIFAR-100: train + test + meta.
TRAIN_NAMES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("train",)
TEST_NAMES = ("test_batch", "test")
META_NAMES = ("batches.meta", "meta")
SIDE = 32

# CIFAR-100's train file, the largest, is 155 MB; a file far above that is not a CIFAR batch.
MAX_FILE_BYTES = 256 << 20


class _ArrayClass:
    """Stands for numpy.ndarray in a pickle: usable only as `_reconstruct`'s first argument
    (calling it, as `ndarray(shape, dtype)`, would allocate uninitialised memory)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray(...) called directly: an uninitialised array, not CIFAR data")


def _reconstruct(cls, shape, dtype):
    """numpy's `_reconstruct`, restricted to what numpy's pickles call it with: an empty array
    of a plain dtype, then filled by the pickle's BUILD step (`ndarray.__setstate__`)."""
    if cls is not _ArrayClass:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    if tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"_reconstruct with shape {tuple(shape)}: numpy's pickles start from (0,)")
    return np.empty((0,), dtype=_dtype(dtype))


def _dtype(spec, *args):
    dtype = np.dtype(spec, *args[:2])
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing dtype {dtype}: arrays of Python objects are not CIFAR pixels")
    return dtype


# The only globals a CIFAR pickle (numpy arrays, bytes written by Python 2 or 3) refers to, each
# mapped to what the unpickler hands out for it.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 store bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of the CIFAR format")


def load_pickle(path: str | Path) -> dict:
    """Load a CIFAR batch/meta pickle safely; keys are returned as str. UserError if not CIFAR."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # Bounded twice: by the size the file says it has, and by what is read (it may grow).
            data = None if os.fstat(f.fileno()).st_size > MAX_FILE_BYTES else f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise UserError(f"CIFAR file {path}: unreadable: {err.strerror or err}") from None
    if data is None or len(data) > MAX_FILE_BYTES:
        raise UserError(f"CIFAR file {path}: larger than {MAX_FILE_BYTES >> 20} MB, more than any CIFAR "
                        "file; not a CIFAR python-version pickle")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # UnpicklingError, EOFError, ValueError...
        raise UserError(f"CIFAR file {path}: not a CIFAR python-version pickle: {err}") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR file {path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values, path: Path, key: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, (bytes, str)) for v in values):
        raise UserError(f"CIFAR meta {path}: {key!r} is not a list of names")
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def class_names(meta_path: Path) -> list[str]:
    meta = load_pickle(meta_path)
    for key in ("label_names", "fine_label_names"):
        if key in meta:
            return _names(meta[key], meta_path, key)
    raise UserError(f"CIFAR meta {meta_path}: no label_names or fine_label_names")


@functools.lru_cache(maxsize=2)  # a worker reads one batch file per block; 30 MB each
def load_batch(path: str) -> tuple[np.ndarray, list[int]]:
    """-> (N x 32 x 32 x 3 uint8 pixels, N labels). UserError if the batch is malformed."""
    batch = load_pickle(path)
    labels = batch.get("labels", batch.get("fine_labels"))
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise UserError(f"CIFAR batch {path}: 'data' is not an N x 3072 uint8 array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise UserError(f"CIFAR batch {path}: 'labels'/'fine_labels' missing or not {len(data)} ints")
    return data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


def read_image(ref: str) -> bytes:
    """`BATCHFILE#INDEX` -> a binary PPM of that image (decodable by PIL, deterministic)."""
    path, _, index = ref.rpartition("#")
    pixels, _ = load_batch(path)
    return f"P6 {SIDE} {SIDE} 255\n".encode() + np.ascontiguousarray(pixels[int(index)]).tobytes()


def is_ref(path: str) -> bool:
    head, sep, index = path.rpartition("#")
    return bool(sep) and index.isdigit() and Path(head).name in TRAIN_NAMES + TEST_NAMES


def looks_like_cifar(path: Path) -> bool:
    if path.is_dir():
        return any((path / m).is_file() for m in META_NAMES) and any((path / n).is_file() for n in TRAIN_NAMES + TEST_NAMES)
    return path.is_file() and path.name in TRAIN_NAMES + TEST_NAMES


def list_cifar(source: str | Path):
    """A CIFAR directory (or one batch file, next to its meta file) -> Listing."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"source {source} does not exist")
    folder = source if source.is_dir() else source.parent
    batches = [source] if source.is_file() else [folder / n for n in TRAIN_NAMES + TEST_NAMES if (folder / n).is_file()]
    if not batches:
        raise UserError(f"source {source}: no CIFAR batch files ({', '.join(TRAIN_NAMES + TEST_NAMES)})")
    meta = next((folder / m for m in META_NAMES if (folder / m).is_file()), None)
    if meta is None:
        raise UserError(f"source {source}: no CIFAR meta file ({' or '.join(META_NAMES)}) next to the batches")
    classes = class_names(meta)
    if len(classes) < 2:
        raise UserError(f"CIFAR meta {meta}: {len(classes)} class name(s); need at least 2")
    has_train = any(b.name in TRAIN_NAMES for b in batches)
    has_test = any(b.name in TEST_NAMES for b in batches)
    keep_split = has_train and has_test  # otherwise ingest assigns val from each image's id
    items = []
    for batch in batches:
        _, labels = load_batch(str(batch.resolve()))
        if labels and (min(labels) < 0 or max(labels) >= len(classes)):
            raise UserError(f"CIFAR batch {batch}: labels {min(labels)}..{max(labels)} outside the {len(classes)} classes of {meta}")
        split = ("train" if batch.name in TRAIN_NAMES else "val") if keep_split else None
        items += [Item(f"{batch.resolve()}#{i}", classes[label], split) for i, label in enumerate(labels)]
    if not items:
        raise UserError(f"source {source}: the CIFAR batches hold no images")
    return Listing(classes, items, [], keep_split)
