"""Small conv+BN+ReLU networks of increasing capacity, for the offline digits profile and tests."""

from __future__ import annotations

import torch
import torch.nn as nn

from trainables.models import register_model


class SmallCNN(nn.Module):
    """A stack of 3x3 conv+BN+ReLU layers (given widths and strides), adaptive pooling, linear head."""

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...], num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {widths} and strides {strides} must have the same length")
        layers: list[nn.Module] = []
        prev = in_channels
        for width, stride in zip(widths, strides):
            layers += [nn.Conv2d(prev, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        # Pooling to 2x2 rather than 1x1 keeps where strokes are: global pooling alone leaves
        # digit classifiers this small far below 90 % clean accuracy.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(prev * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0, 1] images."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("cnn_small")
def cnn_small(num_classes: int, in_channels: int) -> SmallCNN:
    """Two conv layers (16, 32 channels): a few ms per 128-image step on a CPU."""
    return SmallCNN((16, 32), (1, 2), num_classes, in_channels)


@register_model("cnn_medium")
def cnn_medium(num_classes: int, in_channels: int) -> SmallCNN:
    """Three conv layers (24..48 channels)."""
    return SmallCNN((24, 48, 48), (1, 2, 1), num_classes, in_channels)


@register_model("cnn_large")
def cnn_large(num_classes: int, in_channels: int) -> SmallCNN:
    """Four conv layers (32..128 channels)."""
    return SmallCNN((32, 64, 64, 128), (1, 2, 1, 1), num_classes, in_channels)
