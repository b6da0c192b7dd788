"""Distillation methods: ARD, IAD and RSLAD (the method under search)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from trainables.attacks import cross_entropy, kl_to_model, kl_to_target
from trainables.methods.base import Method
from trainables.methods.losses import ard_loss, iad_loss, parse_rsl_source, rslad_loss
from trainables.methods.registry import register_method


@register_method("ard")
class ARD(Method):
    """ARD: t^2-scaled KL from the teacher's clean soft labels to S(x'), x' from CE-PGD in train mode."""

    needs_teacher = True

    def adversarial(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ARD's inner attack: PGD on the student's CE, uniform start, student left in train mode."""
        return self.attack(student, x, cross_entropy(y), start="uniform", mode="train")

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        x_adv = self.adversarial(student, x, y)
        return ard_loss(self.forward(student, x), self.forward(student, x_adv), self.forward(teacher, x), y,
                        self.cfg.ard_alpha, self.cfg.ard_temperature)


@register_method("iad")
class IAD(ARD):
    """IAD-I: ARD's attack; distillation from T(x) plus, after iad_warmup_epochs, introspection weighted by 1 - P_T(x')[y]^beta.

    Temperature 1 throughout, IAD-I's default (ard_temperature is ARD's only); see iad_loss.
    """

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        x_adv = self.adversarial(student, x, y)
        # The teacher's trust in x' is only needed once the introspection term starts.
        teacher_adv = self.forward(teacher, x_adv) if epoch >= self.cfg.iad_warmup_epochs else None
        return iad_loss(self.forward(student, x), self.forward(student, x_adv), self.forward(teacher, x), teacher_adv,
                        y, self.cfg.ard_alpha, self.cfg.iad_beta)


@register_method("rslad")
class RSLAD(Method):
    """RSLAD: robust soft labels of the teacher replace hard labels in both the inner and the outer loss."""

    needs_teacher = True

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        t1, t2, t3 = parse_rsl_source(self.cfg.rsl_source)
        # The teacher runs under the same bf16 autocast as the student on CUDA: it is most of the FLOPs.
        teacher_nat = self.forward(teacher, x) if self.asks_teacher_on_clean() else None
        # T3 = T(x'): the target moves with x', so the teacher runs inside every attack step.
        objective = kl_to_target(torch.softmax(teacher_nat.float(), 1)) if t3 == "nat" else kl_to_model(partial(self.forward, teacher))
        x_adv = self.attack(student, x, objective, start="gaussian")
        teacher_adv = self.forward(teacher, x_adv) if "adv" in (t1, t2) else None
        return rslad_loss(self.forward(student, x), self.forward(student, x_adv), teacher_nat, teacher_adv,
                          self.cfg.alpha, self.cfg.rsl_source, self.cfg.kl_scale)

    def asks_teacher_on_clean(self) -> bool:
        """T(x) is needed only when some soft label is T(x): adv-adv-adv never shows the teacher a clean batch."""
        return "nat" in parse_rsl_source(self.cfg.rsl_source)
