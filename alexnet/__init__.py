"""AlexNet: the network definitions (plain PyTorch) and the loop that trains them.

Only torch is imported here; the training loop's Ray and MLflow imports live in its own modules.
"""

from alexnet.models import ARCHITECTURES, build_model, count_parameters

__all__ = ["ARCHITECTURES", "build_model", "count_parameters"]
