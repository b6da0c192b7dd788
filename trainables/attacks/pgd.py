"""The one PGD: L-inf projected sign-gradient ascent with a pluggable objective; FGSM is its one-step case."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn as nn

from trainables.attacks.objectives import Objective

Start = Literal["none", "uniform", "gaussian"]
Mode = Literal["eval", "train", "keep"]


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: Mode):
    """Put `model` in eval/train mode for the block and restore each submodule's own mode afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if mode != "keep":
            model.train(mode == "train")
        yield model
    finally:
        for m, training in saved:
            m.training = training


def random_start(x: torch.Tensor, start: Start, eps: float, gaussian_std: float = 0.001,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial point of the attack: x itself, uniform in the eps-ball, or x + std * N(0, 1); clamped to [0,1]."""
    if start == "none":
        return x.clone()
    if start == "uniform":
        noise = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1
        return (x + eps * noise).clamp(0, 1)
    if start == "gaussian":
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        # The reference does not project the Gaussian start; 0.001 is far inside any eps we use.
        return (x + gaussian_std * noise).clamp(0, 1)
    raise ValueError(f"start={start!r} is not allowed; allowed: none, uniform, gaussian")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start: Start = "uniform",
    mode: Mode = "eval",
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise `objective(model(x'), x')` over |x' - x|_inf <= eps, x' in [0,1]; returns detached x'.

    Gradients are taken w.r.t. the input only (torch.autograd.grad), so no parameter
    .grad is ever touched. The model's train/eval mode is set by `mode` for the attack
    and restored afterwards.
    """
    x = x.detach()
    x_adv = random_start(x, start, eps, generator=generator)
    if steps <= 0 or eps == 0:
        # Project here too: at eps = 0 the (unprojected) Gaussian start would otherwise leave the ball.
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with model_mode(model, mode), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast:
                logits = model(x_adv)
            loss = objective(logits, x_adv)
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, objective: Objective, *, eps: float,
         mode: Mode = "eval") -> torch.Tensor:
    """One signed-gradient step of size eps from x (no random start)."""
    return pgd(model, x, objective, eps=eps, step_size=eps, steps=1, start="none", mode=mode)
