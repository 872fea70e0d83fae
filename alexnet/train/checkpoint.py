"""Checkpoint files: everything needed to resume, loadable with `weights_only=True`.

One file, `state.pt`, holding tensors and plain Python values only (no pickled classes), so
loading a checkpoint from elsewhere cannot execute code; and `meta.json` (epoch, metrics, dataset
version), so the driver can find a run's latest checkpoint without reading the weights.

A checkpoint is named by a local path or a URI (s3://bucket/runs/RUN/checkpoint_...: Ray Train's
storage on a cluster); every read here goes through `pipelines.storage`, as datasets do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs
import torch

from pipelines import storage
from pipelines.atomic import write_atomic
from pipelines.errors import UserError, first_line

STATE_FILE = "state.pt"
META_FILE = "meta.json"
# Waits between tries of a read that failed for a reason other than "not found" (an S3 hiccup):
# answering "no checkpoint" then would restart a long run at epoch 0.
READ_RETRY_WAITS_S = (1.0, 3.0)


def save(directory: str | os.PathLike, *, model, optimizer, plateau: dict, epoch: int, config: dict,
         dataset_version: str, metrics: dict, num_classes: int) -> Path:
    path = Path(directory) / STATE_FILE
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plateau": plateau,
        "epoch": epoch,  # the last completed epoch, 0-based
        "config": config,
        "dataset_version": dataset_version,
        "metrics": metrics,
    }
    write_atomic(path, lambda f: torch.save(state, f))
    # state_bytes lets a reader tell a complete upload from one cut off by a killed process.
    write_atomic(Path(directory) / META_FILE,
                 json.dumps({"epoch": epoch, "dataset_version": dataset_version, "metrics": metrics,
                             "state_bytes": path.stat().st_size, "shape": shape_of(config, num_classes)}))
    return path


def shape_of(config: dict, num_classes: int) -> dict:
    """What a run resuming from a checkpoint must share with it: the weights' and the optimiser
    state's layout. (Learning rate, epochs, augmentation may change between runs.)"""
    return {"model.arch": config["model"]["arch"], "model.hidden": int(config["model"]["hidden"]),
            "num_classes": int(num_classes), "optim.optimizer": config["optim"]["optimizer"]}


def mismatches(meta: dict, config: dict, num_classes: int) -> list[str]:
    """`key: checkpoint X, config Y` for each shape entry that differs (empty = resumable)."""
    theirs, ours = meta["shape"], shape_of(config, num_classes)
    return [f"{k}: checkpoint {theirs[k]}, this run {ours[k]}" for k in ours if k in theirs and theirs[k] != ours[k]]


def load(checkpoint: str | os.PathLike, map_location="cpu") -> dict:
    """The state of the checkpoint folder `checkpoint` (a path or a URI)."""
    loc = storage.locate(checkpoint).join(STATE_FILE)
    if not storage.is_file(loc):
        raise FileNotFoundError(f"{loc}: no checkpoint state file")
    if loc.local:
        return torch.load(loc.path, map_location=map_location, weights_only=True)
    # Copied to a local temporary file first: torch.load seeks back and forth, and a whole
    # AlexNet state (weights and optimiser, ~700 MB) is better on disk than twice in memory.
    with loc.fs.open_input_stream(loc.path) as src, tempfile.TemporaryFile() as tmp:
        shutil.copyfileobj(src, tmp, 8 << 20)
        tmp.seek(0)
        return torch.load(tmp, map_location=map_location, weights_only=True)


def read_meta(checkpoint: str | os.PathLike) -> dict:
    """epoch, dataset_version and metrics of a checkpoint (a path or a URI), without loading its weights."""
    meta_loc = storage.locate(checkpoint).join(META_FILE)
    if not storage.is_file(meta_loc):
        raise FileNotFoundError(f"{meta_loc}: no {META_FILE}")
    meta = json.loads(storage.read_bytes(meta_loc))
    if not isinstance(meta, dict) or "shape" not in meta:
        raise ValueError(f"{meta_loc}: no shape entry (not a checkpoint this project wrote)")
    return meta


def find_latest(storage_path: str, run_name: str) -> tuple[str, int] | None:
    """(checkpoint path or URI, its epoch) of the highest epoch stored for `run_name` under
    `storage_path` (a folder or a URI such as s3://bucket/runs), or None when the run has no
    complete checkpoint. A store that fails to answer (after READ_RETRY_WAITS_S) is a UserError,
    never "no checkpoint"."""
    found = complete_checkpoints(storage_path, run_name)
    if not found:
        return None
    path, meta = max(found, key=lambda pm: int(pm[1]["epoch"]))
    return path, int(meta["epoch"])


def find_best(storage_path: str, run_name: str) -> tuple[str, dict] | None:
    """(checkpoint path or URI, its meta.json) of `run_name`'s best stored val top-1 (the later
    epoch on a tie), or None when the run has no complete checkpoint with metrics."""
    found = [(p, m) for p, m in complete_checkpoints(storage_path, run_name) if "val_top1" in (m.get("metrics") or {})]
    if not found:
        return None
    return max(found, key=lambda pm: (pm[1]["metrics"]["val_top1"], int(pm[1]["epoch"])))


def complete_checkpoints(storage_path: str, run_name: str) -> list[tuple[str, dict]]:
    """[(path or URI, meta.json)] of `run_name`'s checkpoints whose upload finished."""
    run = storage.locate(storage_path).join(run_name)
    entries = _reading(lambda: storage.listing(run), run)
    found = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
            continue
        folder = run.join(entry.base_name)
        try:
            meta = json.loads(_reading(lambda: storage.read_bytes(folder.join(META_FILE)), folder))
            int(meta["epoch"])
            state = _reading(lambda: folder.fs.get_file_info(folder.join(STATE_FILE).path), folder)
            if state.type != pyarrow.fs.FileType.File or state.size != meta.get("state_bytes", state.size):
                continue  # upload cut off (a killed driver or worker): not a checkpoint to resume from
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # half-uploaded or foreign: not a checkpoint to resume from
        found.append((folder.uri, meta))
    return found


def _reading(call, where: storage.Location):
    """`call()`, tried again after each of READ_RETRY_WAITS_S when the store fails; "not found"
    is an answer, not a failure."""
    for wait in (*READ_RETRY_WAITS_S, None):
        try:
            return call()
        except FileNotFoundError:
            raise
        except OSError as err:
            if wait is None:
                raise UserError(f"cannot read the checkpoints at {where.uri} ({first_line(err)}; "
                                f"{len(READ_RETRY_WAITS_S) + 1} tries): nothing was started, so the run "
                                f"does not restart from epoch 0 by mistake; run it again once the store answers") from None
            time.sleep(wait)


def uri_of(storage_path: str, path: str) -> str:
    """A checkpoint folder that Ray Train names by its path on the storage's filesystem
    (`bucket/runs/RUN/checkpoint_...` for s3://bucket/runs) -> its path or URI."""
    root = storage.locate(storage_path)
    if root.local or not path.startswith(root.path.rstrip("/") + "/"):
        return path
    return root.uri.rstrip("/") + path[len(root.path.rstrip("/")):]
