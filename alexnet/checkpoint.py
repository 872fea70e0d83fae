"""Checkpoint files: everything needed to resume, loadable with `weights_only=True`.

One file, `state.pt`, holding tensors and plain Python values only (no pickled classes), so
loading a checkpoint from elsewhere cannot execute code; and `meta.json` (epoch, metrics, dataset
version), so the driver can find a run's latest checkpoint without reading the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pipelines.atomic import write_atomic

STATE_FILE = "state.pt"
META_FILE = "meta.json"


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
    return {"model.arch": config["model"]["arch"], "model.hidden": int(config["model"].get("hidden", 4096)),
            "num_classes": int(num_classes), "optim.optimizer": config["optim"]["optimizer"]}


def mismatches(meta: dict, config: dict, num_classes: int) -> list[str]:
    """`key: checkpoint X, config Y` for each shape entry that differs (empty = resumable)."""
    theirs, ours = meta["shape"], shape_of(config, num_classes)
    return [f"{k}: checkpoint {theirs[k]}, this run {ours[k]}" for k in ours if k in theirs and theirs[k] != ours[k]]


def load(directory: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint state file")
    return torch.load(path, map_location=map_location, weights_only=True)


def read_meta(directory: str | os.PathLike) -> dict:
    """epoch, dataset_version and metrics of a checkpoint, without loading its weights."""
    meta = Path(directory) / META_FILE
    if meta.is_file():
        meta = json.loads(meta.read_text())
        if "shape" in meta:
            return meta
    state = load(directory)  # written before meta.json (or its shape entry) existed
    num_classes = state["model"][next(reversed(state["model"]))].shape[0]  # the last layer's bias
    return {**{k: state[k] for k in ("epoch", "dataset_version", "metrics")},
            "shape": shape_of(state["config"], num_classes)}


def find_latest(storage: str, run_name: str) -> tuple[str, int] | None:
    """(checkpoint path, its epoch) of the highest epoch stored for `run_name` under `storage`
    (a directory or a pyarrow/fsspec URI), or None when the run has no complete checkpoint."""
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, ValueError):
        fs, root = pyarrow.fs.LocalFileSystem(), os.path.abspath(storage)
    run_dir = f"{root.rstrip('/')}/{run_name}"
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    except OSError:
        return None
    best = None
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{entry.path}/{META_FILE}") as f:
                meta = json.loads(f.read())
            epoch = int(meta["epoch"])
            state = fs.get_file_info(f"{entry.path}/{STATE_FILE}")
            if state.type != pyarrow.fs.FileType.File or state.size != meta.get("state_bytes", state.size):
                continue  # upload cut off (a killed driver or worker): not a checkpoint to resume from
        except (OSError, ValueError, KeyError):
            continue  # half-uploaded or foreign: not a checkpoint to resume from
        if best is None or epoch > best[1]:
            best = (entry.path if "://" not in storage else _uri(storage, root, entry.path), epoch)
    return best


def _uri(storage: str, root: str, path: str) -> str:
    scheme = storage.split("://", 1)[0]
    return f"{scheme}://{path}"
