"""Methods without a teacher: natural training, SAT (Madry) and TRADES."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.attacks import cross_entropy, kl_to_target, model_mode
from trainables.methods.base import Method
from trainables.methods.losses import trades_loss
from trainables.methods.registry import register_method


@register_method("natural")
class Natural(Method):
    """CE(S(x), y): no attack."""

    attacks = False

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        return F.cross_entropy(self.forward(student, x).float(), y)


@register_method("sat")
class SAT(Method):
    """Madry's adversarial training: CE(S(x'), y), x' from PGD on CE with a uniform start.

    Madry's cifar10_challenge (the code the paper cites) crafts x' with the training graph, i.e.
    BatchNorm on batch statistics: sat_attack_mode='train' (the default) does the same; 'eval'
    attacks with running statistics instead. Either way the student's modes are restored afterwards.
    """

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        x_adv = self.attack(student, x, cross_entropy(y), start="uniform", mode=self.cfg.sat_attack_mode)
        return F.cross_entropy(self.forward(student, x_adv).float(), y)


@register_method("trades")
class TRADES(Method):
    """TRADES: CE(S(x), y) + beta KL(S(x) || S(x')), x' maximising that KL from x + 0.001 N(0,1)."""

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        # The reference computes the attack's target S(x) in eval mode, like the attack itself.
        with torch.no_grad(), model_mode(student, "eval"):
            target = F.softmax(self.forward(student, x).float(), dim=1)
        x_adv = self.attack(student, x, kl_to_target(target), start="gaussian")
        student_nat = self.forward(student, x)
        student_adv = self.forward(student, x_adv)
        return trades_loss(student_nat, student_adv, y, self.cfg.trades_beta)
