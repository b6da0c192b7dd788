"""The model zoo: a registry of architecture factories, built only when `build_model` is called.

Every model takes inputs in [0, 1] of any size >= 8x8, any channel count and any class
count (adaptive average pooling before the classifier). Only the DeepMind WideResNets
(`wrn70_16`, `wrn34_20_swish`) normalise inside the model, as their released weights expect,
with the statistics of the dataset they are built for (`build_model(..., dataset=...)`).
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from trainables.registry import Registry

ModelFactory = Callable[[int, int], nn.Module]
"""A factory `(num_classes, in_channels) -> nn.Module`."""

MODELS: Registry[ModelFactory] = Registry("model")
# Factories that also take `dataset=` (models that normalise inside with the dataset's statistics).
_TAKES_DATASET: set[str] = set()


def register_model(name: str, *, takes_dataset: bool = False) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a `(num_classes, in_channels) -> nn.Module` factory under `name` (with `dataset=` if takes_dataset)."""
    if takes_dataset:
        _TAKES_DATASET.add(name)
    return MODELS.register(name)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return MODELS.names()


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, dataset: str | None = None) -> nn.Module:
    """Build the registered model `name` with fresh weights; raises UnknownNameError for unknown names.

    `dataset` (cifar10, cifar100, digits) reaches the models that normalise inside; without it they
    infer the statistics from the shape (100 RGB classes: CIFAR-100; other RGB: CIFAR-10).
    """
    factory = MODELS.get(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"model {name!r}: num_classes={num_classes} and in_channels={in_channels} must be >= 1")
    if name in _TAKES_DATASET:
        return factory(num_classes, in_channels, dataset=dataset)
    return factory(num_classes, in_channels)


# The submodules register their factories on import; they need MODELS to exist first.
from trainables.models import mobilenet, resnet, small, wideresnet  # noqa: E402
from trainables.models.wideresnet import DMWideResNet, WideResNet  # noqa: E402

__all__ = [
    "MODELS",
    "DMWideResNet",
    "ModelFactory",
    "WideResNet",
    "build_model",
    "list_models",
    "register_model",
    "mobilenet",
    "resnet",
    "small",
    "wideresnet",
]
