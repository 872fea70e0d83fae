"""The single-tower AlexNet of torchvision (`torchvision.models.alexnet`), state_dict for state_dict.

Module names, indices and construction order are torchvision's, so a checkpoint loads either way
and the same seed gives the same weights. Its widths (64, 192, 384, 256, 256) follow the
"one weird trick" paper (Krizhevsky 2014), not the 2012 paper; see `paper.py` for that one.
Initialisation is PyTorch's default, as torchvision leaves it.
"""

import torch
from torch import nn


class TorchvisionAlexNet(nn.Module):
    """Input 224x224 (any size from 63 px works: the adaptive pool fits the map to 6x6)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, hidden: int = 4096) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # Identity at 224 input (the map is already 6x6); resamples other sizes to what fc6 expects.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)  # logits (N, num_classes)
