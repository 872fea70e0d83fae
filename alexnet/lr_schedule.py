"""Learning-rate schedules, looked up by name: lr for an epoch is a pure function.

The plateau rule (the paper's "divide by 10 when the validation error stops improving") needs
memory; `Plateau` keeps it and is saved in checkpoints, so a resumed run keeps its decays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PLATEAU_PATIENCE = 3  # epochs without a better val top-1 before dividing by 10


def scaled_lr(lr_per_128: float, global_batch: int) -> float:
    """Linear scaling rule: the recipes give lr per 128 images (the paper's batch)."""
    return lr_per_128 * global_batch / 128


def _constant(epoch: int, epochs: int, step_size: int) -> float:
    return 1.0


def _step(epoch: int, epochs: int, step_size: int) -> float:
    return 0.1 ** (epoch // step_size)  # torchvision's AlexNet recipe: x0.1 every 30 epochs


def _cosine(epoch: int, epochs: int, step_size: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))


LR_SCHEDULES = {"constant": _constant, "plateau": _constant, "step": _step, "cosine": _cosine}


def lr_at(epoch: int, *, base: float, schedule: str, epochs: int, warmup_epochs: int, plateau_scale: float = 1.0,
          step_size: int = 30, fraction: float = 0.0) -> float:
    """Learning rate for 0-based `epoch`, `fraction` (0 <= f < 1) of the way through it: a linear
    warm-up from base/10 that moves every step (a staircase per epoch would run a whole first
    epoch at base/10), then the schedule, which moves per epoch."""
    if epoch < warmup_epochs:
        return base * (0.1 + 0.9 * (epoch + fraction) / warmup_epochs)
    factor = LR_SCHEDULES[schedule](epoch - warmup_epochs, epochs - warmup_epochs, step_size)
    return base * factor * plateau_scale


@dataclass
class Plateau:
    best: float = -math.inf
    bad_epochs: int = 0
    scale: float = 1.0

    def update(self, val_top1: float) -> None:
        if val_top1 > self.best:
            self.best, self.bad_epochs = val_top1, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= PLATEAU_PATIENCE:
            self.scale, self.bad_epochs = self.scale * 0.1, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}
