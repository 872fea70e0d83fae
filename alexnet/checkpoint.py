"""Checkpoint files: everything needed to resume, loadable with `weights_only=True`.

One file, `state.pt`, holding tensors and plain Python values only (no pickled classes), so
loading a checkpoint from elsewhere cannot execute code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

STATE_FILE = "state.pt"


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
    return path


def load(directory: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint state file")
    return torch.load(path, map_location=map_location, weights_only=True)
