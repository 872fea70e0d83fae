"""The one way the project writes a file that a reader relies on: whole, or not at all.

Local files: written to a temporary file beside the target (`.NAME.tmp-XXXXXXXX`), fsynced,
renamed over the target, and the folder fsynced, so after a crash or power loss the target holds
the old content or the new, never a mix, and what `dataset.json` lists is on disk before it is.
Any failure (a full disk, a serialiser that raises, Ctrl-C) removes the temporary file and leaves
the target as it was.

Object stores (s3://, gs://...): there is no rename, but an object appears only when its upload
completes. The content is produced in memory first and uploaded in one piece, so a writer that
raises uploads nothing.

Lock files are opened here too (`open_lock_file`): never through a symlink, regular files only.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import uuid
from typing import BinaryIO, Callable

from pipelines import storage
from pipelines.errors import UserError
from pipelines.storage import Location

Writer = Callable[[BinaryIO], None]


def temp_name(name: str) -> str:
    """The temporary file written beside `name` (`pipelines.ingest.destination` recognises the pattern)."""
    return f".{name}.tmp-{uuid.uuid4().hex[:8]}"


def write_atomic(target: str | os.PathLike | Location, content: bytes | str | Writer) -> None:
    """Replace `target` (a path, a URI or a Location) with `content`: bytes, text (UTF-8), or a
    function that writes into the binary file object it is given."""
    loc = target if isinstance(target, Location) else storage.locate(target)
    if not loc.local:
        _upload(loc, content)
        return
    folder, name = os.path.split(loc.path)
    tmp = os.path.join(folder, temp_name(name))
    try:
        with open(tmp, "xb") as f:
            _fill(f, content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def write_atomic_dir(target: str | os.PathLike, fill: Callable[[str], None]) -> None:
    """Create the local folder `target` whole or not at all: `fill(path)` writes the folder's
    content into a temporary sibling, which is fsynced and renamed to `target` in one step. A
    `target` that exists is an error (FileExistsError): folders are written once."""
    target = os.path.abspath(target)
    if os.path.exists(target):
        raise FileExistsError(f"{target} already exists")
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, temp_name(name))
    os.mkdir(tmp)
    try:
        fill(tmp)
        for folder, _, files in os.walk(tmp):
            for file in files:
                with open(os.path.join(folder, file), "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(folder)
        os.replace(tmp, target)
    except BaseException:

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)


def _fill(f: BinaryIO, content: bytes | str | Writer) -> None:
    if isinstance(content, str):
        f.write(content.encode())
    elif isinstance(content, (bytes, bytearray, memoryview)):
        f.write(content)
    else:
        content(f)


def _upload(loc: Location, content: bytes | str | Writer) -> None:
    buffer = io.BytesIO()
    _fill(buffer, content)
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(buffer.getbuffer())


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (the folder's entry), where the OS allows it."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_lock_file(path: str | os.PathLike, *, create: bool = True) -> int:
    """A lock file's descriptor, opened without following a symlink and only if it is a regular
    file: a `.lock` link planted in a shared folder must not make us truncate or write the file it
    points to (nor block on a FIFO). With `create` False it is opened read-only (enough for a shared
    flock), and FileNotFoundError means no lock."""
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path}: a symbolic link where a lock file belongs; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: not a regular file where a lock file belongs; remove it")
    return fd
