"""The AlexNet variants, looked up by name in one table; adding one is one entry in ARCHITECTURES.

Plain torch.nn modules: no Ray, no MLflow. Each returns logits (N, num_classes); softmax belongs
to the loss and to predict.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from alexnet.models.bn import BatchNormAlexNet
from alexnet.models.paper import PaperAlexNet
from alexnet.models.torchvision_alexnet import TorchvisionAlexNet
from pipelines.errors import UserError

# name -> constructor(num_classes, dropout=<the source's default>)
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    # Krizhevsky, Sutskever & Hinton 2012, two-GPU split as groups=2, LRN; 227x227 input.
    "paper": PaperAlexNet,
    # torchvision.models.alexnet, state_dicts interchangeable; 224x224 input.
    "torchvision": TorchvisionAlexNet,
    # The starting article's Keras model with BatchNorm after every layer; 224x224 input.
    "bn": BatchNormAlexNet,
}


def build_model(arch: str, num_classes: int, *, dropout: float | None = None, hidden: int = 4096) -> nn.Module:
    """A freshly initialised `arch` with `num_classes` outputs.

    dropout: drop probability of the FC layers; None keeps the source's (0.5 paper and
    torchvision, 0.4 bn). hidden: units of the two hidden fully connected layers, 4096 in every
    source; fewer make a much smaller and faster network for quick CPU runs (the FC layers hold
    ~95% of AlexNet's parameters).
    """
    if arch not in ARCHITECTURES:
        choices = ", ".join(sorted(ARCHITECTURES))
        raise UserError(f"Unknown architecture {arch!r}: only {choices} are supported")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise UserError(f"hidden must be a positive number of units, got {hidden!r}")
    if dropout is None:
        return ARCHITECTURES[arch](num_classes, hidden=hidden)
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return ARCHITECTURES[arch](num_classes, dropout=dropout, hidden=hidden)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or frozen); buffers such as BN running stats not counted."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "build_model", "count_parameters"]
