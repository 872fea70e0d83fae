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

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save(directory: str | os.PathLike, *, model, optimizer, plateau: dict, scaler, epoch: int, config: dict,
         dataset_version: str, metrics: dict) -> Path:
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "plateau": plateau,
            "scaler": scaler.state_dict() if scaler is not None else {},
            "epoch": epoch,  # the last completed epoch, 0-based
            "config": config,
            "dataset_version": dataset_version,
            "metrics": metrics,
        },
        tmp,
    )
    os.replace(tmp, path)
    meta = Path(directory) / META_FILE
    # state_bytes lets a reader tell a complete upload from one cut off by a killed process.
    meta.write_text(json.dumps({"epoch": epoch, "dataset_version": dataset_version, "metrics": metrics,
                                "state_bytes": path.stat().st_size}))
    return path


def load(directory: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint state file")
    return torch.load(path, map_location=map_location, weights_only=True)


def read_meta(directory: str | os.PathLike) -> dict:
    """epoch, dataset_version and metrics of a checkpoint, without loading its weights."""
    meta = Path(directory) / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    state = load(directory)  # a checkpoint written before meta.json existed
    return {k: state[k] for k in ("epoch", "dataset_version", "metrics")}


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
