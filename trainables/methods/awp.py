"""Adversarial weight perturbation (AWP, Wu et al. 2020) for SAT and TRADES, as csdongxian/AWP trains it.

One step of `sat_awp` / `trades_awp` (AT_AWP/train_cifar10.py, trades_AWP/train_trades_cifar.py):
1. craft x' with the unperturbed student (the method's own attack);
2. calc_awp: copy the student into a proxy model (train mode), take one plain SGD step on the
   proxy that *increases* the method's outer loss on (x, x'), and, for every parameter whose
   state-dict name contains 'weight' and has 2+ dims (conv and linear weights; BatchNorm and
   biases are left alone), rescale the proxy's change to that weight's norm:
   v = ||w|| / (||w_proxy - w|| + 1e-20) * (w_proxy - w);
3. perturb: w <- w + gamma * v, then the outer loss is computed (and the loop steps the optimiser)
   at the perturbed weights;
4. restore (Method.after_step, called by the loop after the optimiser step): w <- w - gamma * v,
   which leaves w_old + the optimiser's update (up to float rounding, as in the reference).
AWP starts at epoch `awp_warmup` (0-based; the reference tests `epoch >= awp_warmup`), and
`awp_gamma = 0` turns it off, as the reference's `awp_gamma <= 0`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from trainables.methods.registry import register_method
from trainables.methods.standard import SAT, TRADES, AdversarialTraining

if TYPE_CHECKING:  # the config checks method names against this registry: the type only, not an import cycle
    from trainables.config import TrainConfig

EPS = 1e-20
"""The reference's guard against a zero change in diff_in_weights."""


def weight_perturbation(model: nn.Module, proxy: nn.Module) -> dict[str, torch.Tensor]:
    """The reference's diff_in_weights: (proxy - model) per weight of 2+ dims, rescaled to that weight's norm."""
    diff: dict[str, torch.Tensor] = {}
    # Paired by position, as the reference zips the two state dicts (the proxy is a copy of the model).
    for (name, old), (_, new) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if old.dim() <= 1 or "weight" not in name:
            continue
        change = new - old
        diff[name] = old.norm() / (change.norm() + EPS) * change
    return diff


def add_into_weights(model: nn.Module, diff: dict[str, torch.Tensor], coeff: float) -> None:
    """The reference's add_into_weights: param += coeff * diff[name], in place, for each parameter in diff."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in diff:
                param.add_(coeff * diff[name])


class AdversarialWeightPerturbation(AdversarialTraining):
    """AWP around an AdversarialTraining method: its attack, its outer loss, at adversarially perturbed weights.

    Subclasses list the host method second (class SATAWP(AdversarialWeightPerturbation, SAT)), so
    that the host's `adversarial` and `outer_loss` are the ones used.
    """

    proxy_lr: ClassVar[float | None] = None
    """Learning rate of the proxy's SGD step; None: the run's lr. It cancels in the rescaling except for rounding."""

    def __init__(self, cfg: TrainConfig, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__(cfg, autocast_dtype)
        self._proxy: nn.Module | None = None
        self._proxy_of: nn.Module | None = None
        self._proxy_optim: torch.optim.Optimizer | None = None
        self._pending: tuple[nn.Module, dict[str, torch.Tensor]] | None = None

    def active(self, epoch: int) -> bool:
        """Whether AWP perturbs the weights at 0-based `epoch` (after the warm-up, gamma > 0)."""
        return self.cfg.awp_gamma > 0 and epoch >= self.cfg.awp_warmup

    def loss(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        if self._pending is not None:
            raise RuntimeError("AWP: the previous step's weight perturbation was not restored; "
                               "call method.after_step(student) after each optimiser step")
        x_adv = self.adversarial(student, x, y)
        if self.active(epoch):
            diff = self.calc_awp(student, x, x_adv, y)
            add_into_weights(student, diff, 1.0 * self.cfg.awp_gamma)
            self._pending = (student, diff)
        return self.outer_loss(student, x, x_adv, y)

    def calc_awp(self, student: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        """The unscaled perturbation v: one SGD ascent step of the outer loss on a proxy copy, rescaled per weight."""
        proxy, optim = self._proxy_for(student)
        proxy.load_state_dict(student.state_dict())
        # The proxy runs in train mode (batch statistics) as the reference's; its own BN statistics are discarded.
        proxy.train()
        loss = -self.outer_loss(proxy, x, x_adv, y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        return weight_perturbation(student, proxy)

    def after_step(self, student: nn.Module) -> None:
        """Remove the perturbation from the (now updated) weights: w <- w - gamma * v."""
        if self._pending is None:
            return
        model, diff = self._pending
        self._pending = None
        add_into_weights(model, diff, -1.0 * self.cfg.awp_gamma)

    def _proxy_for(self, student: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The proxy model (a copy of the student, made once per student) and its plain SGD (no momentum, no decay)."""
        if self._proxy is None or self._proxy_optim is None or self._proxy_of is not student:
            proxy = copy.deepcopy(student).requires_grad_(True)
            lr = self.cfg.lr if self.proxy_lr is None else self.proxy_lr
            self._proxy, self._proxy_optim, self._proxy_of = proxy, torch.optim.SGD(proxy.parameters(), lr=lr), student
        return self._proxy, self._proxy_optim


@register_method("sat_awp")
class SATAWP(AdversarialWeightPerturbation, SAT):
    """SAT + AWP (AT-AWP): CE(S_{w + gamma v}(x'), y), v ascending CE(S(x'), y) on a proxy."""

    proxy_lr = 0.01  # AT_AWP/train_cifar10.py: SGD(proxy.parameters(), lr=0.01)


@register_method("trades_awp")
class TRADESAWP(AdversarialWeightPerturbation, TRADES):
    """TRADES + AWP (TRADES-AWP): the TRADES loss at w + gamma v, v ascending that same loss on a proxy."""

    proxy_lr = None  # trades_AWP/train_trades_cifar.py: SGD(proxy.parameters(), lr=args.lr)
