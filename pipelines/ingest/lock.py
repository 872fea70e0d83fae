"""The exclusive lock an ingest holds on its destination for the whole run.

A second ingest into the same destination does not wait: it stops at once with one line (exit 2)
naming who holds the lock. Waiting behind a run that may take hours, holding a CLI or a
scheduled job open, helps nobody; the operator re-runs it, and the re-run adds only what is new.

Local paths: `flock` on `DEST/.ingest.lock`. The kernel drops it when the holder dies, however
it dies, so a killed run never blocks the next one. The file is removed when a run ends (while
still locked; a run that opened the old file notices it is gone and starts over).

Object stores have no flock. There the lock is an object, `DEST/.ingest.lock`, naming its owner,
rewritten every HEARTBEAT_S seconds by a thread of the ingest; it counts as held while its last
heartbeat is younger than STALE_S. Taking it: read it (a fresh one held by another run: refused),
write ours, wait SETTLE_S, read it back (someone else's: refused). Before committing, the ingest
checks it still owns it. Limits, stated as they are: the store cannot compare-and-swap. Two runs
that both find no live lock and write theirs: the read-back shows both the later write, and the
earlier writer steps back; only a run stalled for more than SETTLE_S between its read and its
write can slip past, and then the commit-time checks (still the owner; every new shard still
there) stop one of them. A killed run blocks the destination for up to STALE_S. Heartbeat ages
are judged by the reader's clock: hosts need synchronised clocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from pipelines import storage
from pipelines.atomic import open_lock_file, write_atomic
from pipelines.errors import UserError
from pipelines.storage import Location

LOCK_FILE = ".ingest.lock"
HEARTBEAT_S = 15.0  # how often a running ingest refreshes its lock object
STALE_S = 120.0  # a lock object older than this is a dead run's
SETTLE_S = 1.0  # between writing the lock object and reading it back


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
            fd = open_lock_file(self.path)
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


def probe(dest: Location, stale_s: float = STALE_S) -> None:
    """LockBusy if an ingest holds `dest` now; touches nothing (a pre-check before Ray starts)."""
    if not dest.local:
        current = read_object_lock(dest)
        if current and _fresh(current, stale_s):
            raise busy_error(dest, current, f", last heartbeat {time.time() - current['heartbeat']:.0f} s ago")
        return
    try:
        fd = open_lock_file(os.path.join(dest.path, LOCK_FILE), create=False)
    except FileNotFoundError:
        return
    try:
        if not _try_flock(fd, fcntl.LOCK_SH, tries=1):
            raise busy_error(dest, _parse(os.pread(fd, 4096, 0)))
    finally:
        os.close(fd)


@dataclass
class ObjectLock:
    """The lock object on an object store (see the module docstring for what it can promise)."""

    dest: Location
    stale_s: float = STALE_S
    holder: dict = field(default_factory=_owner)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def loc(self) -> Location:
        return self.dest.join(LOCK_FILE)

    def acquire(self) -> None:
        try:  # a missing bucket or a refused credential shows here first: one line, not a traceback
            current = read_object_lock(self.dest)
            if current and current.get("owner") != self.holder["owner"] and _fresh(current, self.stale_s):
                raise busy_error(self.dest, current, f", last heartbeat {time.time() - current['heartbeat']:.0f} s ago")
            self._write()
        except OSError as err:
            raise UserError(f"{self.dest}: cannot write there: {str(err).splitlines()[0]}") from None
        time.sleep(SETTLE_S)  # a run that raced us has written its own by now: the read-back tells
        current = read_object_lock(self.dest)
        if not current or current.get("owner") != self.holder["owner"]:
            raise busy_error(self.dest, current)
        self._thread = threading.Thread(target=self._beat, name="ingest-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        write_atomic(self.loc, json.dumps({**self.holder, "heartbeat": time.time()}))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (read_object_lock(self.dest) or {}).get("owner") != self.holder["owner"]:
                    return  # taken over: `verify` refuses the commit
                self._write()
            except OSError:
                continue  # a transient store error; the next beat retries, `verify` decides

    def verify(self) -> None:
        current = read_object_lock(self.dest)
        if not current or current.get("owner") != self.holder["owner"]:
            raise UserError(f"{self.dest}: this ingest lost its lock to another run{_who(current)} "
                            "(a heartbeat was missed for longer than its expiry); nothing was committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if (read_object_lock(self.dest) or {}).get("owner") == self.holder["owner"]:
                storage.delete(self.loc)
        except OSError:
            pass  # left behind, it expires after STALE_S


def read_object_lock(dest: Location) -> dict | None:
    try:
        holder = _parse(storage.read_bytes(dest.join(LOCK_FILE)))
    except FileNotFoundError:
        return None
    return holder if holder and isinstance(holder.get("heartbeat"), (int, float)) else None


def _fresh(holder: dict, stale_s: float) -> bool:
    return time.time() - holder["heartbeat"] < stale_s


def _who(holder: dict | None) -> str:
    return f" (pid {holder.get('pid', '?')} on {holder.get('host', '?')})" if holder else ""


def lock_for(dest: Location, stale_s: float = STALE_S):
    """The lock kind the destination's filesystem supports."""
    return LocalLock(dest) if dest.local else ObjectLock(dest, stale_s)
