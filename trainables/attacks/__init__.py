"""Attacks: one PGD with pluggable objectives, FGSM as its one-step case, and the AutoAttack adapter."""

from trainables.attacks.objectives import (
    Objective,
    cross_entropy,
    cw_margin,
    kl_div_per_sample,
    kl_to_model,
    kl_to_target,
)
from trainables.attacks.pgd import fgsm, model_mode, pgd, random_start

# The AutoAttack adapter (trainables.attacks.autoattack) is imported where it is used: it pulls
# in pyautoattack, which training never needs.

__all__ = [
    "Objective",
    "cross_entropy",
    "cw_margin",
    "fgsm",
    "kl_div_per_sample",
    "kl_to_model",
    "kl_to_target",
    "model_mode",
    "pgd",
    "random_start",
]
