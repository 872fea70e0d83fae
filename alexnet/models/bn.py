"""The BatchNorm AlexNet of the article this project started from (a Keras `Sequential`).

GeeksforGeeks, "ML | Getting Started With AlexNet" (2020), layer for layer at its 224x224 input:

    conv1  96 x 11x11 stride 4 'valid' -> 54x54, ReLU, max pool 2x2/2 -> 27x27, BN
    conv2 256 x 11x11 'valid'          -> 17x17, ReLU, max pool 2x2/2 -> 8x8,   BN
    conv3 384 x 3x3 'valid'            -> 6x6,   ReLU, BN
    conv4 384 x 3x3 'valid'            -> 4x4,   ReLU, BN
    conv5 256 x 3x3 'valid'            -> 2x2,   ReLU, max pool 2x2/2 -> 1x1,   BN
    flatten (256), Dense 4096, ReLU, dropout 0.4, BN, Dense 4096, ReLU, dropout 0.4, BN, Dense

The article's order (conv -> ReLU -> pool -> BN, dense -> ReLU -> dropout -> BN) is kept. Its
`Dense(4096, input_shape=(224*224*3,))` argument is ignored by Keras inside a Sequential; the first
Dense sees the 256 flattened features. 28,056,616 parameters at 1000 classes (plus 19,136 BN
running statistics, which are buffers here and "non-trainable params" in Keras's summary).

Deviation for small inputs: after pool1 an AdaptiveMaxPool2d((27, 27)) fits the map to the 27x27
that the rest of the network is built for. At 224 (and anything from 223 to 230, 227 included)
pool1 already gives 27x27 and the adaptive pool is the identity, so the arithmetic is the
article's. At 64x64 input pool1 gives 7x7, on which the 'valid' 11x11 conv2 would fail; the
adaptive pool upsamples it (nearest-style) instead. Any input from 11 px up works.

Initialisation is Keras's default: glorot_uniform kernels (= xavier_uniform_, same fans), zero
biases, BN gamma 1 and beta 0. Keras's BatchNormalization(momentum=0.99, epsilon=1e-3) is torch's
momentum=0.01, eps=1e-3 (torch's momentum weights the new batch, Keras's the running value).
"""

from collections import OrderedDict

import torch
from torch import nn

BN_MOMENTUM = 0.01  # Keras momentum 0.99
BN_EPS = 1e-3  # Keras default epsilon


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _bn1d(features: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, eps=BN_EPS, momentum=BN_MOMENTUM)


class BatchNormAlexNet(nn.Module):
    """Input 224x224 (native); anything from 11 px works. Returns logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.4, hidden: int = 4096) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(kernel_size=2, stride=2)),
            # Identity at the native size; see the module docstring.
            ("fit1", nn.AdaptiveMaxPool2d((27, 27))),
            ("bn1", _bn2d(96)),
            ("conv2", nn.Conv2d(96, 256, kernel_size=11)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(kernel_size=2, stride=2)),
            ("bn2", _bn2d(256)),
            ("conv3", nn.Conv2d(256, 384, kernel_size=3)),
            ("relu3", nn.ReLU(inplace=True)),
            ("bn3", _bn2d(384)),
            ("conv4", nn.Conv2d(384, 384, kernel_size=3)),
            ("relu4", nn.ReLU(inplace=True)),
            ("bn4", _bn2d(384)),
            ("conv5", nn.Conv2d(384, 256, kernel_size=3)),
            ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(kernel_size=2, stride=2)),
            ("bn5", _bn2d(256)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256, hidden)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(p=dropout)),
            ("bn6", _bn1d(hidden)),
            ("fc7", nn.Linear(hidden, hidden)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(p=dropout)),
            ("bn7", _bn1d(hidden)),
            # The article ends in Activation('softmax'); here fc8 gives logits, and the softmax
            # belongs to the loss (cross_entropy) and to predict.
            ("fc8", nn.Linear(hidden, num_classes)),
        ]))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)  # Keras glorot_uniform
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)  # logits (N, num_classes)
