"""Where a dataset's files live: a local path or any URI pyarrow can open (s3://, gs://, hdfs://).

One abstraction over `pyarrow.fs.FileSystem.from_uri`, the resolver Ray Data uses too, so the
ingest writer, the validating reader and the Ray Data tasks agree on what a path means.
Credentials and endpoints come only from the standard places (for S3 the `AWS_*` variables,
including `AWS_ENDPOINT_URL`, or the instance role): a URI carrying a password or `?options` is
refused, so a URI is safe to print, store in `dataset.json` and log as an MLflow param.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs

from pipelines.errors import UserError
from pipelines.redaction import carries_credentials, redact

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(target) -> bool:
    """True for `scheme://...` (file:// included), False for a plain local path."""
    return isinstance(target, str) and bool(_SCHEME.match(target))


def absolute(target: str | os.PathLike) -> str:
    """A URI as given; a local path made absolute. Paths handed to Ray tasks must be: a worker's
    working folder is not the driver's once the driver joins a running cluster (RAY_ADDRESS)."""
    return target if is_uri(target) else os.path.abspath(target)


@dataclass(frozen=True)
class Location:
    """A file or folder: `fs` and its own `path` for pyarrow, `uri` for people and metadata
    (an absolute local path, or the URI as given)."""
    fs: object  # pyarrow.fs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:

        return isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> "Location":
        tail = "/".join(p.strip("/") for p in parts if p)
        return Location(self.fs, f"{self.path.rstrip('/')}/{tail}", f"{self.uri.rstrip('/')}/{tail}")

    def __str__(self) -> str:
        return self.uri


def locate(target: str | os.PathLike) -> Location:
    """A local path (relative ones made absolute) or a URI -> Location. UserError for a URI
    pyarrow cannot open or one that carries credentials or options."""
    if not is_uri(target):
        path = os.path.abspath(os.fspath(target))
        return Location(pyarrow.fs.LocalFileSystem(), path, path)
    parts = urlsplit(target)
    if carries_credentials(target) or parts.query:
        raise UserError(f"{redact(target)}: credentials and options do not belong in the URI (it is printed "
                        "and stored); use the standard variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) "
                        "or an instance role")
    if parts.scheme == "file":
        return locate(parts.path)
    fs, root = _filesystem(f"{parts.scheme}://{parts.netloc}")
    path = f"{root.rstrip('/')}{parts.path}".rstrip("/") or "/"
    return Location(fs, path, target.rstrip("/"))


@functools.lru_cache(maxsize=16)
def _filesystem(root: str):
    """One pyarrow filesystem per scheme://authority and process (a Ray task reading many
    shards of one bucket builds one S3 client)."""
    try:
        return pyarrow.fs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as err:
        raise UserError(f"{root}: not a filesystem pyarrow can open here ({err})") from None


def file_type(loc: Location):
    """pyarrow.fs.FileType of `loc` (NotFound when absent)."""
    return loc.fs.get_file_info(loc.path).type


def exists(loc: Location) -> bool:

    return file_type(loc) != pyarrow.fs.FileType.NotFound


def is_file(loc: Location) -> bool:

    return file_type(loc) == pyarrow.fs.FileType.File


def is_dir(loc: Location) -> bool:

    return file_type(loc) == pyarrow.fs.FileType.Directory


def read_bytes(loc: Location, limit: int | None = None) -> bytes:
    """The whole file; with `limit`, only a regular file of at most `limit` bytes (checked before
    reading: a device or FIFO never ends, a huge object fills the reader's memory). Raises
    FileNotFoundError / OSError."""
    if loc.local:
        if limit is None:
            with open(loc.path, "rb") as f:
                return f.read()
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat could refuse it.
        with os.fdopen(os.open(loc.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"not a regular file: {loc.path}")
            _check_size(st.st_size, limit, loc)
            return f.read()
    if limit is None:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()
    with loc.fs.open_input_file(loc.path) as f:
        _check_size(f.size(), limit, loc)
        return f.read()


def _check_size(size: int, limit: int, loc: Location) -> None:
    if size > limit:
        raise OSError(f"{size} bytes, over the {limit // 2**20} MiB limit for one image file: {loc}")


def open_input(target: str | Location):
    """A random-access file (for Parquet footers and row groups) at a path or URI."""
    loc = target if isinstance(target, Location) else locate(target)
    return loc.fs.open_input_file(loc.path)


def pyarrow_paths(targets: list[str]) -> tuple[object, list[str]]:
    """Paths or URIs on one filesystem -> (that filesystem, their paths on it), for pyarrow and
    Ray Data readers that take a `filesystem=`."""
    locs = [locate(t) for t in targets]
    if any(type(loc.fs) is not type(locs[0].fs) for loc in locs):
        raise UserError(f"{targets[0]} and the other paths given are on different filesystems")
    return (locs[0].fs if locs else None), [loc.path for loc in locs]


def listing(loc: Location, recursive: bool = False) -> list:
    """pyarrow FileInfos under `loc` (empty when it does not exist)."""
    return loc.fs.get_file_info(pyarrow.fs.FileSelector(loc.path, recursive=recursive, allow_not_found=True))


def relative(loc: Location, info) -> str:
    """The path of a FileInfo from `listing(loc)` relative to `loc`, '/'-separated."""
    return info.path[len(loc.path.rstrip("/")) + 1:]


def delete(loc: Location) -> None:
    """Remove a file, or a folder with everything in it; absent is fine."""
    kind = file_type(loc)
    try:
        if kind == pyarrow.fs.FileType.Directory:
            loc.fs.delete_dir(loc.path)
        elif kind != pyarrow.fs.FileType.NotFound:
            loc.fs.delete_file(loc.path)
    except FileNotFoundError:
        pass


def remove_empty_dir(loc: Location) -> None:
    """rmdir a local folder if it is empty (object stores have no folders to remove)."""
    if loc.local:
        try:
            os.rmdir(loc.path)
        except OSError:
            pass


def make_dirs(loc: Location) -> None:
    """Create a local folder and its parents (object stores need none)."""
    if loc.local:
        os.makedirs(loc.path, exist_ok=True)
