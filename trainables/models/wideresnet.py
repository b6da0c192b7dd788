"""WideResNets with the parameter names of the public releases, so their weights load strictly.

- `WideResNet`: the TRADES / Madry layout (conv1, block1..3.layer.N, bn1, relu, fc; ReLU).
  The TRADES code also defines a `sub_block1` it never calls in forward; it is NOT built
  here (it would be dead weight for a student), and `trainables.teachers` drops its keys.
- `DMWideResNet`: the DeepMind / RobustBench layout of Gowal et al. (init_conv,
  layer.N.block.M, batchnorm, logits; swish). It normalises inside the model with `mean` and
  `std` buffers holding the statistics of the dataset it is built for (CIFAR-10 or CIFAR-100, as
  RobustBench builds it). Some RobustBench files hold no such keys (the loader then keeps the
  model's own values), others store them shaped (3, 1, 1) (the loader reshapes them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Per-dataset input statistics of the DeepMind WideResNets (RobustBench's values).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}


def dataset_stats(dataset: str | None, num_classes: int, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a normalising model uses for `dataset`; without a name, CIFAR-100's for 100 classes, CIFAR-10's for other RGB, 0.5 else."""
    if dataset is None and in_channels == 3:
        dataset = "cifar100" if num_classes == 100 else "cifar10"
    if dataset in DATASET_STATS and in_channels == 3:
        return DATASET_STATS[dataset]
    return (0.5,) * in_channels, (0.5,) * in_channels


# --- TRADES / Madry WideResNet ----------------------------------------------------------
class BasicBlock(nn.Module):
    """Pre-activation block; when the width changes, the shortcut sees the activated input (as in TRADES)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """`num_layers` BasicBlocks in `.layer`; the first changes width and stride."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(num_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Group output."""
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen as in TRADES (depth 34: five blocks per group), adaptive pooling, `fc` head."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth={depth} must be 6n+4 with n >= 1")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0, 1] images."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- DeepMind / RobustBench WideResNet ----------------------------------------------------
class _Block(nn.Module):
    """Pre-activation block with TF 'SAME' padding done by hand (asymmetric at stride 2), as the released weights expect."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=0.01)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=0.01)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if in_planes == out_planes else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        act = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(act, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        shortcut = x if self.shortcut is None else self.shortcut(act)
        return shortcut + out


class _BlockGroup(nn.Module):
    """`num_blocks` _Blocks in `.block`; the first changes width and stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(num_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Group output."""
        return self.block(x)


class DMWideResNet(nn.Module):
    """Gowal et al.'s WideResNet (swish by default) with input normalisation inside, as RobustBench's DMWideResNet."""

    def __init__(self, depth: int = 70, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 activation: type[nn.Module] = nn.SiLU, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, dataset: str | None = None) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DMWideResNet depth={depth} must be 6n+4 with n >= 1")
        if mean is None or std is None:
            # The released weights were trained on inputs normalised with their dataset's statistics.
            mean, std = dataset_stats(dataset, num_classes, in_channels)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, in_channels, 1, 1))
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(n, widths[0], widths[1], 1, activation),
            _BlockGroup(n, widths[1], widths[2], 2, activation),
            _BlockGroup(n, widths[2], widths[3], 2, activation),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3], momentum=0.01)
        self.relu = activation()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0, 1] images (normalised here)."""
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int) -> WideResNet:
    """TRADES WideResNet-34-10 (ReLU), the RSLAD teacher."""
    return WideResNet(34, 10, num_classes, in_channels)


@register_model("wrn34_20")
def wrn34_20(num_classes: int, in_channels: int) -> WideResNet:
    """TRADES-layout WideResNet-34-20 (ReLU)."""
    return WideResNet(34, 20, num_classes, in_channels)


@register_model("wrn34_20_swish", takes_dataset=True)
def wrn34_20_swish(num_classes: int, in_channels: int, dataset: str | None = None) -> DMWideResNet:
    """DeepMind WideResNet-34-20 (swish, normalisation inside with the dataset's statistics): Gowal et al.'s 34-20."""
    return DMWideResNet(34, 20, num_classes, in_channels, dataset=dataset)


@register_model("wrn70_16", takes_dataset=True)
def wrn70_16(num_classes: int, in_channels: int, dataset: str | None = None) -> DMWideResNet:
    """DeepMind WideResNet-70-16 (swish, normalisation inside with the dataset's statistics): Gowal et al.'s 70-16."""
    return DMWideResNet(70, 16, num_classes, in_channels, dataset=dataset)
