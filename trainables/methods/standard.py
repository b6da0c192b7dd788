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


class AdversarialTraining(Method):
    """A method whose step is: craft x' (`adversarial`), then the outer loss on (x, x') (`outer_loss`).

    Split in two so that a wrapper (AWP, trainables.methods.awp) can act between the attack and
    the outer loss's forward, and can maximise the same outer loss on a proxy model.
    """

    def adversarial(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The inner maximisation: the detached x' for batch (x, y)."""
        raise NotImplementedError

    def outer_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar to minimise given x and x' (model in train mode)."""
        raise NotImplementedError

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        return self.outer_loss(student, x, self.adversarial(student, x, y), y)


@register_method("sat")
class SAT(AdversarialTraining):
    """Madry's adversarial training: CE(S(x'), y), x' from PGD on CE with a uniform start.

    Madry's cifar10_challenge (the code the paper cites) crafts x' with the training graph, i.e.
    BatchNorm on batch statistics: sat_attack_mode='train' (the default) does the same; 'eval'
    attacks with running statistics instead. Either way the student's modes are restored afterwards.
    """

    def adversarial(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD on CE from a uniform start, in sat_attack_mode."""
        return self.attack(student, x, cross_entropy(y), start="uniform", mode=self.cfg.sat_attack_mode)

    def outer_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE(model(x'), y)."""
        return F.cross_entropy(self.forward(model, x_adv).float(), y)


@register_method("trades")
class TRADES(AdversarialTraining):
    """TRADES: CE(S(x), y) + beta KL(S(x) || S(x')), x' maximising that KL from x + 0.001 N(0,1)."""

    def adversarial(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD on KL(S(x) || S(x')) from x + 0.001 N(0, 1), student in eval mode."""
        # The reference computes the attack's target S(x) in eval mode, like the attack itself.
        with torch.no_grad(), model_mode(student, "eval"):
            target = F.softmax(self.forward(student, x).float(), dim=1)
        return self.attack(student, x, kl_to_target(target), start="gaussian")

    def outer_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE(model(x), y) + beta KL(model(x) || model(x')), batch mean."""
        model_nat = self.forward(model, x)
        model_adv = self.forward(model, x_adv)
        return trades_loss(model_nat, model_adv, y, self.cfg.trades_beta)
