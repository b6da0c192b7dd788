"""The Method base class: one training step's loss, with the shared attack and forward helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from trainables.attacks import Objective, pgd
from trainables.attacks.pgd import Mode, Start

if TYPE_CHECKING:  # trainables.config imports the method registry to check names: the type only, not a circle
    from trainables.config import TrainConfig


class Method:
    """A training method: builds the adversarial batch and returns the outer loss for one step."""

    needs_teacher: ClassVar[bool] = False
    attacks: ClassVar[bool] = True
    """Whether training crafts adversarial examples (then eps = 0 would silently train without an attack)."""
    description: ClassVar[str] = ""

    def __init__(self, cfg: TrainConfig, autocast_dtype: torch.dtype | None = None) -> None:
        self.cfg = cfg
        self.autocast_dtype = autocast_dtype

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        """The scalar loss to minimise on batch (x, y) at 0-based `epoch`; student is in train mode."""
        raise NotImplementedError

    def after_step(self, student: nn.Module) -> None:
        """Called by the loop right after each optimiser step (AWP restores its perturbed weights here); default: nothing."""

    def asks_teacher_on_clean(self) -> bool:
        """Whether each step runs the teacher on the clean batch: what the soft-label cache can answer instead."""
        return self.needs_teacher

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """model(x) under the run's autocast (bf16 on CUDA when amp is on)."""
        if self.autocast_dtype is None:
            return model(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return model(x)

    def attack(self, student: nn.Module, x: torch.Tensor, objective: Objective, *, start: Start,
               mode: Mode = "eval") -> torch.Tensor:
        """The inner maximisation with the run's eps, steps and step size."""
        cfg = self.cfg
        return pgd(student, x, objective, eps=cfg.eps, step_size=cfg.attack_step_size,
                   steps=cfg.attack_steps, start=start, mode=mode, autocast_dtype=self.autocast_dtype)
