"""Attack objectives: what PGD maximises. Each returns a SUM over the batch (only the gradient sign matters)."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F


class Objective(Protocol):
    """Maps the attacked model's logits on x_adv (and x_adv itself) to a scalar to maximise."""

    def __call__(self, logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor: ...


def kl_div_per_sample(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(P || softmax(logits)) per sample, P given as probabilities; 0*log0 counts as 0."""
    log_q = F.log_softmax(logits.float(), dim=1)
    p = target_probs.float()
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1)


def cross_entropy(labels: torch.Tensor) -> Objective:
    """Cross-entropy of the true labels (SAT, ARD, evaluation PGD)."""

    def objective(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    return objective


def kl_to_target(target_probs: torch.Tensor) -> Objective:
    """KL(target || model(x_adv)) for a fixed target distribution (RSLAD with T3 = T(x), TRADES)."""
    target = target_probs.detach()

    def objective(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return kl_div_per_sample(target, logits).sum()

    return objective


def kl_to_model(target_model: Callable[[torch.Tensor], torch.Tensor]) -> Objective:
    """KL(softmax(target_model(x_adv)) || model(x_adv)): the target moves with x_adv (RSLAD T3 = T(x'))."""

    def objective(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.softmax(target_model(x_adv).float(), dim=1)
        return kl_div_per_sample(target, logits).sum()

    return objective


def cw_margin(labels: torch.Tensor, kappa: float = 50.0) -> Objective:
    """CW-inf margin: max_{j != y} z_j - z_y, clamped at kappa (attack maximises it)."""

    def objective(logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        true = z.gather(1, labels[:, None]).squeeze(1)
        other = z.masked_fill(F.one_hot(labels, z.shape[1]).bool(), float("-inf")).amax(dim=1)
        # The reference clamps -(z_y - max_other) from above: once the margin exceeds kappa it stops pushing.
        return torch.clamp(other - true, max=kappa).sum()

    return objective
