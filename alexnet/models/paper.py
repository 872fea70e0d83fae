"""AlexNet as Krizhevsky, Sutskever and Hinton (NeurIPS 2012) describe it.

Section 3 and Figure 2 of the paper, layer by layer (shapes at the native 227x227 input):

    conv1  96 x 11x11 stride 4 -> 55x55x96, ReLU, LRN, max pool 3x3/2 -> 27x27x96
    conv2 256 x 5x5 pad 2      -> 27x27x256 (per GPU), ReLU, LRN, max pool 3x3/2 -> 13x13x256
    conv3 384 x 3x3 pad 1      -> 13x13x384 (across GPUs), ReLU
    conv4 384 x 3x3 pad 1      -> 13x13x384 (per GPU), ReLU
    conv5 256 x 3x3 pad 1      -> 13x13x256 (per GPU), ReLU, max pool 3x3/2 -> 6x6x256
    fc6 4096, ReLU, dropout 0.5; fc7 4096, ReLU, dropout 0.5; fc8 num_classes

60,965,224 parameters at 1000 classes. The text says 224x224 input, but 11x11 stride 4 only gives
the figure's 55x55 from 227x227 (or 224 with padding the paper never mentions); 227 is native here.

The two-GPU split is kept as grouped convolutions (groups=2) where the paper's kernels see only the
maps on their own GPU (conv2, conv4, conv5), which is what gives the paper's parameter count.
conv1 needs no groups: both halves see all three input channels. conv3 and the FC layers connect
across GPUs. LRN runs over all 96/256 maps (the paper's N is "the total number of kernels in the
layer"); the original cuda-convnet normalised each GPU's half on its own, which differs only for
the two or so maps next to the split.

Deviation for small inputs: pool5 is an AdaptiveMaxPool2d((6, 6)) instead of MaxPool2d(3, 2).
On the native 13x13 map its windows are [0,3), [2,5), ..., [10,13): exactly 3x3 stride 2, so the
arithmetic is the paper's. At 64x64 input the map is 2x2, where a 3x3 pool fails; the adaptive
pool fits it to the 6x6 that fc6 expects (as torchvision's AdaptiveAvgPool2d((6, 6)) does).
Works from 35x35 input up.
"""

from collections import OrderedDict

import torch
from torch import nn

# Section 3.3: b = a / (k + alpha * sum_{n neighbours} a^2) ** beta with k=2, n=5, alpha=1e-4, beta=0.75.
# torch.nn.LocalResponseNorm divides alpha by n (it averages the squares, the paper sums them), so it
# gets alpha * n to compute the paper's formula.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class PaperAlexNet(nn.Module):
    """Input 227x227 (native); anything from 35 px works. Returns logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, hidden: int = 4096) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
            ("relu1", nn.ReLU(inplace=True)),
            ("norm1", _lrn()),
            ("pool1", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("norm2", _lrn()),
            ("pool2", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)),
            ("relu5", nn.ReLU(inplace=True)),
            # = MaxPool2d(3, 2) on the native 13x13 map; see the module docstring.
            ("pool5", nn.AdaptiveMaxPool2d((6, 6))),
        ]))
        # Section 4.2: dropout on the outputs of the first two fully connected layers.
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256 * 6 * 6, hidden)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(p=dropout)),
            ("fc7", nn.Linear(hidden, hidden)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(p=dropout)),
            # The paper's 1000-way softmax is not a layer here: fc8 gives logits, and the
            # softmax belongs to the loss (cross_entropy) and to predict.
            ("fc8", nn.Linear(hidden, num_classes)),
        ]))
        self._init_weights()

    def _init_weights(self) -> None:
        # Section 5: every weight from N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the hidden
        # FC layers (fc6, fc7) to give the ReLUs positive inputs early on; 0 in conv1, conv3, fc8.
        ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name, module in [*self.features.named_children(), *self.classifier.named_children()]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 1.0 if name in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)  # logits (N, num_classes)
