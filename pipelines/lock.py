"""The exclusive lock an ingest holds on its destination for the whole run.

A second ingest into the same destination does not wait: it stops at once with one line (exit 2)
naming who holds the lock. Waiting behind a run that may take hours, holding a CLI or a
scheduled job open, helps nobody; the operator re-runs it, and the re-run adds only what is new.

Local paths: `flock` on `DEST/.ingest.lock`. The kernel drops it when the holder dies, however
it dies, so a killed run never blocks the next one. The file is removed when a run ends (while
still locked; a run that opened the old file notices it is gone and starts over).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from pipelines.errors import UserError
from pipelines.storage import Location

LOCK_FILE = ".ingest.lock"


class LockBusy(UserError):
    """Another ingest holds the destination."""


def _owner() -> dict:
    return {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def busy_error(dest: Location, holder: dict | None, detail: str = "") -> LockBusy:
    who = ""
    if holder:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        who = f" (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}{detail})"
    return LockBusy(f"{dest}: another `alexnet ingest` is writing this dataset{who}; run again when it has finished")


def _parse(raw: bytes) -> dict | None:
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


@dataclass
class LocalLock:
    """flock on DEST/.ingest.lock; `acquire` creates DEST if needed."""

    dest: Location
    holder: dict = field(default_factory=_owner)
    _fd: int | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.dest.path, LOCK_FILE)

    def acquire(self) -> None:
        while True:
            os.makedirs(self.dest.path, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd, fcntl.LOCK_EX):
                holder = _parse(os.pread(fd, 4096, 0))
                os.close(fd)
                raise busy_error(self.dest, holder)
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # the previous holder removed that file as it ended: take a fresh one
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd

    def verify(self) -> None:
        """Still ours (always, for flock: only the kernel releases it, with the process)."""

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # still locked: nobody can take this file after it is gone
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def _try_flock(fd: int, kind: int, tries: int = 5) -> bool:
    """Non-blocking flock, retried briefly: a `probe` from another process holds a shared lock
    for microseconds, which must not read as a running ingest."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    return False


def probe(dest: Location) -> None:
    """LockBusy if an ingest holds `dest` now; touches nothing (a pre-check before Ray starts)."""
    if not os.path.isfile(os.path.join(dest.path, LOCK_FILE)):
        return
    try:
        fd = os.open(os.path.join(dest.path, LOCK_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if not _try_flock(fd, fcntl.LOCK_SH, tries=1):
            raise busy_error(dest, _parse(os.pread(fd, 4096, 0)))
    finally:
        os.close(fd)


def lock_for(dest: Location):
    return LocalLock(dest)
