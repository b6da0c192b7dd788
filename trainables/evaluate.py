"""Robust evaluation with the supplement's columns (Clean, FGSM, PGD_SAT, PGD_TRADES, CW_inf, AA).

Every per-batch attack goes through the one PGD (`trainables.attacks.pgd`); AutoAttack goes
through its one adapter (`trainables.attacks.autoattack`). The model is in eval mode and fp32
(autocast disabled) for every column, and its own train/eval modes are restored afterwards.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn as nn

from trainables.attacks.autoattack import autoattack
from trainables.attacks.objectives import cross_entropy, cw_margin
from trainables.attacks.pgd import fgsm, model_mode, pgd
from trainables.config import TrainConfig
from trainables.registry import Registry

log = logging.getLogger(__name__)

EvalAttack = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, torch.Generator], torch.Tensor]
"""(model, x, y, eps, generator) -> x_adv for one batch already on the model's device."""

EVAL_ATTACKS: Registry[EvalAttack] = Registry("evaluation attack")

# AutoAttack is not per batch: it runs once on the whole set through the adapter.
AUTOATTACK = "autoattack"
DEFAULT_ATTACKS: tuple[str, ...] = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf", AUTOATTACK)

# Step sizes below are absolute pixel units, as in the reference scripts (2/255, 0.003 at
# eps = 8/255). They are NOT rescaled when eps changes: at another eps the columns are
# "the reference attack at that eps", not a re-tuned attack.
SAT_STEP = 2 / 255
TRADES_STEP = 0.003
CW_STEP = 2 / 255
CW_KAPPA = 50.0


@EVAL_ATTACKS.register("clean")
def _clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
           generator: torch.Generator) -> torch.Tensor:
    """No attack."""
    return x


@EVAL_ATTACKS.register("fgsm")
def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
          generator: torch.Generator) -> torch.Tensor:
    """One sign step of size eps on CE, no random start."""
    return fgsm(model, x, cross_entropy(y), eps=eps, mode="eval")


@EVAL_ATTACKS.register("pgd_sat")
def _pgd_sat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             generator: torch.Generator) -> torch.Tensor:
    """PGD-20 on CE, step 2/255, uniform start (Madry et al.)."""
    return pgd(model, x, cross_entropy(y), eps=eps, step_size=SAT_STEP, steps=20, start="uniform",
               mode="eval", generator=generator)


@EVAL_ATTACKS.register("pgd_trades")
def _pgd_trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator) -> torch.Tensor:
    """PGD-20 on CE, step 0.003, uniform start (the TRADES/RSLAD evaluation script)."""
    return pgd(model, x, cross_entropy(y), eps=eps, step_size=TRADES_STEP, steps=20, start="uniform",
               mode="eval", generator=generator)


@EVAL_ATTACKS.register("cw_inf")
def _cw_inf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            generator: torch.Generator) -> torch.Tensor:
    """PGD-30 on the CW margin (kappa 50), step 2/255: the CW-inf the paper reports."""
    # Start: uniform in the eps-ball, as the reference evaluation script's PGD-style CW attack
    # does (the paper's table gives no start; the reference's own "CW" is CW-L2, a defect we skip).
    return pgd(model, x, cw_margin(y, kappa=CW_KAPPA), eps=eps, step_size=CW_STEP, steps=30,
               start="uniform", mode="eval", generator=generator)


def validation_attack(cfg: TrainConfig) -> EvalAttack:
    """The attack named by cfg.val_attack, which scores validation and so picks the best checkpoint.

    'pgd' is the cheap PGD (CE, uniform start, cfg.val_attack_steps steps of cfg.attack_step_size);
    any other name is that evaluation column as evaluate() runs it ('pgd_trades' with val_size=0 is
    the reference code's rule: PGD-20, step 0.003, on the test set). The caller sets eval mode.
    """
    if cfg.val_attack == "pgd":
        def cheap_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      generator: torch.Generator) -> torch.Tensor:
            return pgd(model, x, cross_entropy(y), eps=eps, step_size=cfg.attack_step_size,
                       steps=cfg.val_attack_steps, start="uniform", mode="eval", generator=generator)

        return cheap_pgd
    return EVAL_ATTACKS.get(cfg.val_attack)


def list_eval_attacks() -> list[str]:
    """Every column name evaluate() accepts: the per-batch attacks and 'autoattack'."""
    return EVAL_ATTACKS.names() + [AUTOATTACK]


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _check_inputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ValueError unless images are float (N,C,H,W) in [0,1], labels (N,) ints, model fp32."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        raise ValueError("images must be a float tensor in [0,1] shaped (N,C,H,W), got "
                         f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}; "
                         "convert uint8 (N,H,W,C) with x.permute(0,3,1,2).float() / 255")
    # NHWC float images are the one layout mistake a shape check can catch cheaply.
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        raise ValueError(f"images look channels-last {tuple(images.shape)}; pass (N,C,H,W)")
    if images.shape[0] == 0:
        raise ValueError("images is empty; nothing to evaluate")
    if images.min().item() < 0 or images.max().item() > 1:
        raise ValueError(f"images must lie in [0,1], got [{images.min().item():.3g}, {images.max().item():.3g}]")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be an integer tensor shaped ({images.shape[0]},), got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    bad = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if bad:
        raise ValueError(f"evaluation runs in fp32; the model has {sorted(map(str, bad))} parameters (call .float())")


def _batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device: torch.device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches moved to `device`, x as fp32, y as int64."""
    for i in range(0, images.shape[0], batch_size):
        yield (images[i:i + batch_size].to(device=device, dtype=torch.float32),
               labels[i:i + batch_size].to(device=device, dtype=torch.long))


@torch.no_grad()
def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Number of rows of x the model classifies as y."""
    return int((model(x).argmax(dim=1) == y).sum().item())


def accuracy_under(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """Fraction of the batches' examples the model still classifies right after x -> attack(x, y).

    The caller sets the model's mode (evaluate() and the training loop's validation use eval mode).
    """
    correct = seen = 0
    for x, y in batches:
        correct += _count_correct(model, attack(x, y), y)
        seen += len(y)
    return correct / max(seen, 1)


def correct_under(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per example, in batch order: whether the model still classifies it right after x -> attack(x, y) (bool, CPU).

    The caller sets the model's mode, as for accuracy_under.
    """
    with torch.no_grad():
        parts = [(model(attack(x, y)).argmax(dim=1) == y).cpu() for x, y in batches]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def _column_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, name: str, eps: float,
                    batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """Per-image correctness under one per-batch column, with a fresh generator (a column's value does not depend on
    which others ran)."""
    attack = EVAL_ATTACKS.get(name)
    generator = torch.Generator(device=device).manual_seed(seed)
    return correct_under(model, _batches(images, labels, batch_size, device),
                         lambda x, y: attack(model, x, y, eps, generator))


def per_image_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks: Iterable[str],
                      eps: float = 8 / 255, batch_size: int = 256, seed: int = 0,
                      device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Whether each image is classified right under each named per-batch column (bool, CPU, image order): what
    evaluate() averages, kept per image so that two models scored on the same images can be compared pairwise
    (McNemar). AutoAttack is not a per-batch column and is refused."""
    names = list(dict.fromkeys(attacks))
    unknown = [n for n in names if n not in EVAL_ATTACKS.names()]
    if unknown:
        raise ValueError(f"unknown per-batch evaluation column(s) {unknown}; allowed: {', '.join(EVAL_ATTACKS.names())}")
    _check_inputs(model, images, labels)
    device = torch.device(device) if device is not None else _model_device(model)
    with model_mode(model, "eval"), torch.autocast(device_type=device.type, enabled=False):
        return {name: _column_correct(model, images, labels, name, eps, batch_size, seed, device) for name in names}


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             device: torch.device | str | None = None) -> float:
    """Clean accuracy (fraction in [0,1]) in eval mode and fp32; the model's modes are restored."""
    return evaluate(model, images, labels, attacks=("clean",), batch_size=batch_size, device=device)["clean"]


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Iterable[str] = DEFAULT_ATTACKS,
    eps: float = 8 / 255,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    *,
    aa_version: str = "standard",
    aa_attacks: list[str] | None = None,
) -> dict[str, float]:
    """Accuracy (fraction in [0,1]) under each named attack at L-inf `eps`, keyed by column name.

    The AutoAttack column is called "autoattack" only when the run is the standard one
    (AutoAttackResult.is_standard); otherwise it is "autoattack_<version>", so a cheaper
    subset can never be logged as AutoAttack. Deterministic given `seed` and `batch_size`.
    """
    names = list(dict.fromkeys(attacks))  # keep order, drop duplicates
    allowed = list_eval_attacks()
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown evaluation attack(s) {unknown}; allowed: {', '.join(allowed)}")
    _check_inputs(model, images, labels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    n = images.shape[0]
    results: dict[str, float] = {}

    with model_mode(model, "eval"), torch.autocast(device_type=device.type, enabled=False):
        for name in names:
            if name == AUTOATTACK:
                res = autoattack(model, images, labels, eps=eps, version=aa_version, attacks=aa_attacks,
                                 batch_size=batch_size, seed=seed, device=device)
                results[AUTOATTACK if res.is_standard else f"{AUTOATTACK}_{res.version}"] = res.robust_accuracy
                continue
            results[name] = int(_column_correct(model, images, labels, name, eps, batch_size, seed, device).sum()) / n

    log.info("evaluation eps=%.5f n=%d: %s", eps, n, ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
    return results
