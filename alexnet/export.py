"""The model as it is served: uint8 NCHW images in, logits out (normalisation built in).

The registered model carries its dataset's mean/std, class names and input geometry (the
val crop and the shorter side it is cut from), so `predict` and any `mlflow.pytorch.load_model`
user feed it the same uint8 crops the pipeline produces.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, net: nn.Module, mean: list[float], std: list[float], classes: list[str],
                 *, crop: int | None = None, resize: int | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.classes = list(classes)
        self.crop = crop  # px, side of the square input (val: centre crop)
        self.resize = resize  # px, shorter side the val crop is cut from

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return self.net((x - self.mean) / self.std)
