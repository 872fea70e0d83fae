"""An ingest's destination: what may be written into, what a dead run left, what this run made.

- `check(dest)` reads only: a destination is a dataset (its `dataset.json`), empty or absent, or
  the leftovers of a killed first ingest (its lock file, with nothing but ingest's own files);
  anything else is refused, untouched. An ImageNet-style folder given as DEST by mistake is not
  a dataset: its `train/` and `val/` hold class folders, not shards, and it has no lock file.
- `claim(dest)` holds the destination's lock for the whole ingest, removes what dead runs left
  (only while it holds the lock, so never a live run's files), and on failure removes only what
  this run wrote: its own shards (their names carry the run id), and the folders it created.
"""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs

from pipelines import storage
from pipelines.dataset import INFO_FILE, SPLITS, DatasetInfo, load_info
from pipelines.errors import UserError
from pipelines.ingest import lock as locks
from pipelines.storage import Location

REJECTS_FILE = "rejects.csv"
DUPLICATES_FILE = "duplicates.csv"
_OWN_FILES = {INFO_FILE, REJECTS_FILE, DUPLICATES_FILE, locks.LOCK_FILE}
# part-<run id>-<task id>.parquet (and part-<16 hex>.parquet from earlier versions)
_SHARD = re.compile(r"^part-[0-9a-f]{8,16}(-[0-9a-f]{8})?\.parquet$")


def _is_temp(name: str) -> bool:
    """A temporary file of an interrupted write (this version's or an earlier one's)."""
    return name.startswith(".") and ".tmp" in name or (name.startswith("part-") and name.endswith(".tmp"))


def _own_top(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name in SPLITS or name.startswith(".staging-")  # .staging-*: earlier versions
    return name in _OWN_FILES or _is_temp(name)


def _own_shard_entry(name: str, is_dir: bool) -> bool:
    return not is_dir and (_SHARD.match(name) is not None or _is_temp(name))


def check(dest: str | Location) -> DatasetInfo | None:
    """The dataset at `dest` (None: there is none yet). Touches nothing. UserError when `dest`
    is a file, a non-empty folder that is not a dataset, or locked by a running ingest."""
    dest = dest if isinstance(dest, Location) else storage.locate(dest)
    kind = storage.file_type(dest)
    if kind == pyarrow.fs.FileType.NotFound:
        return None
    if kind == pyarrow.fs.FileType.File:
        raise UserError(f"destination {dest} is a file, not a directory")
    if storage.is_file(dest.join(INFO_FILE)):
        return load_info(dest.uri)
    top = storage.listing(dest)
    if not top:
        return None
    names = {storage.relative(dest, e): e.type == pyarrow.fs.FileType.Directory for e in top}
    for split in SPLITS:  # an empty split folder is nothing (object stores leave such markers)
        if names.get(split) and not storage.listing(dest.join(split)):
            del names[split]
    if not names:
        return None
    marker = locks.LOCK_FILE in names or any(n.startswith(".staging-") for n in names)
    foreign = sorted(n for n, d in names.items() if not _own_top(n, d))
    if not foreign and marker:
        for split in SPLITS:
            if names.get(split):
                entries = storage.listing(dest.join(split))
                foreign += [f"{split}/{storage.relative(dest.join(split), e)}" for e in entries
                            if not _own_shard_entry(storage.relative(dest.join(split), e),
                                                    e.type == pyarrow.fs.FileType.Directory)]
    if foreign or not marker:
        example = f" (e.g. {foreign[0]})" if foreign else ""
        raise UserError(f"destination {dest} is a non-empty directory that is not a dataset (no {INFO_FILE}"
                        f"{example}); refusing to write into it: choose a new or empty directory")
    return None


def preflight(dest: str | Location, stale_lock_s: float = locks.STALE_S) -> Location:
    """`dest`, located, once `check` found nothing to refuse there and no ingest is writing it
    (LockBusy; a lock older than `stale_lock_s` is not): all that can be refused before Ray starts
    or anything is created. Touches nothing."""
    loc = dest if isinstance(dest, Location) else storage.locate(dest)
    check(loc)
    locks.probe(loc, stale_lock_s)
    return loc


@dataclass
class Claim:
    """What an ingest holding the destination needs: the dataset there, this run's id (in the
    names of the shards it writes) and the lock to check before committing."""
    dest: Location
    previous: DatasetInfo | None
    run_id: str
    lock: object
    created: bool = False  # the destination did not exist before this run
    committed: bool = False  # dataset.json now lists this run's shards: they are data

    def commit(self, write, new_shards: dict[str, list[str]]) -> None:
        """Run `write()` (which writes dataset.json) if this run still holds the lock and every
        shard it is about to list is there."""
        self.lock.verify()
        for split, rels in new_shards.items():
            present = {f"{split}/{storage.relative(self.dest.join(split), e)}"
                       for e in storage.listing(self.dest.join(split))}
            missing = sorted(set(rels) - present)
            if missing:
                raise RuntimeError(f"{self.dest}: shard {missing[0]} written by this run is gone; "
                                   "another process removed it; nothing was committed")
        write()
        self.committed = True


@contextmanager
def claim(dest: Location, stale_lock_s: float = locks.STALE_S):
    """Lock `dest` (a destination `preflight` accepted, so that nothing is created in a foreign
    folder) for the whole `with` block and yield a Claim. Leftovers of dead runs are removed once
    the lock is held; if the block raises, this run's files are removed. `stale_lock_s`: on object
    storage, the age after which a lock object is a dead run's."""
    created = not storage.exists(dest)
    lock = locks.lock_for(dest, stale_lock_s)
    lock.acquire()
    c = None
    try:
        previous = check(dest)  # under the lock: what is there now (another run may have committed meanwhile)
        _remove_leftovers(dest, previous)
        c = Claim(dest, previous, uuid.uuid4().hex[:8], lock, created)
        yield c
    except BaseException:
        try:
            _remove_own(dest, c)
        finally:
            lock.release()
        if created:
            storage.remove_empty_dir(dest)
        raise
    lock.release()


def _remove_leftovers(dest: Location, previous: DatasetInfo | None) -> None:
    """Under the lock every unlisted shard and temp file is a dead run's: remove them."""
    listed = {rel for names in (previous.shards.values() if previous else []) for rel in names}
    for entry in storage.listing(dest):
        name = storage.relative(dest, entry)
        if name.startswith(".staging-") or (entry.type == pyarrow.fs.FileType.File and _is_temp(name)):
            storage.delete(dest.join(name))
    for split in SPLITS:
        folder = dest.join(split)
        for entry in storage.listing(folder):
            name = storage.relative(folder, entry)
            if _own_shard_entry(name, entry.type == pyarrow.fs.FileType.Directory) and f"{split}/{name}" not in listed:
                storage.delete(folder.join(name))


def _remove_own(dest: Location, c: Claim | None) -> None:
    """After a failure: this run's shards and temp files, and the split folders if now empty
    and the destination held no dataset."""
    if c is not None and not c.committed:
        for split in SPLITS:
            folder = dest.join(split)
            for entry in storage.listing(folder):
                name = storage.relative(folder, entry)
                if c.run_id in name and (name.startswith("part-") or name.startswith(".part-")):
                    storage.delete(folder.join(name))
    if c is None or (c.previous is None and not c.committed):
        for split in SPLITS:
            storage.remove_empty_dir(dest.join(split))
