"""Outer (minimisation) losses of every method, as pure functions of logits: easy to check by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.attacks.objectives import kl_div_per_sample
from trainables.schema import RSL_SOURCES


def parse_rsl_source(rsl_source: str) -> tuple[str, str, str]:
    """Split 'nat-adv-nat' into (T1, T2, T3); each is 'nat' (T(x)) or 'adv' (T(x'))."""
    if rsl_source not in RSL_SOURCES:
        raise ValueError(f"rsl_source={rsl_source!r} is not allowed; allowed: {', '.join(RSL_SOURCES)}")
    t1, t2, t3 = rsl_source.split("-")
    return t1, t2, t3


def rslad_loss(student_nat: torch.Tensor, student_adv: torch.Tensor, teacher_nat: torch.Tensor | None,
               teacher_adv: torch.Tensor | None, alpha: float, rsl_source: str = "nat-nat-nat",
               kl_scale: float = 0.1) -> torch.Tensor:
    """RSLAD's L_min = kl_scale * [(1-alpha) KL(T1 || S(x)) + alpha KL(T2 || S(x'))], per-sample KL averaged over the batch.

    All arguments are logits; T1/T2 pick teacher_nat (T(x)) or teacher_adv (T(x')) by rsl_source.
    """
    t1, t2, _ = parse_rsl_source(rsl_source)
    soft = {"nat": teacher_nat, "adv": teacher_adv}
    for which in {t1, t2}:
        if soft[which] is None:
            raise ValueError(f"rsl_source={rsl_source!r} needs teacher_{which} logits, got None")
    p1 = F.softmax(soft[t1].float(), dim=1)
    p2 = F.softmax(soft[t2].float(), dim=1)
    natural = kl_div_per_sample(p1, student_nat).mean()
    adversarial = kl_div_per_sample(p2, student_adv).mean()
    return kl_scale * ((1 - alpha) * natural + alpha * adversarial)


def trades_loss(student_nat: torch.Tensor, student_adv: torch.Tensor, labels: torch.Tensor,
                beta: float) -> torch.Tensor:
    """TRADES: CE(S(x), y) + beta * KL(S(x) || S(x')), batch mean; gradients flow through both sides as in the reference."""
    p_nat = F.softmax(student_nat.float(), dim=1)
    robust = kl_div_per_sample(p_nat, student_adv).mean()
    return F.cross_entropy(student_nat.float(), labels) + beta * robust


def ard_loss(student_nat: torch.Tensor, student_adv: torch.Tensor, teacher_nat: torch.Tensor,
             labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """ARD: alpha * t^2 * KL(T(x)/t || S(x')/t) (element mean over batch x classes) + (1-alpha) CE(S(x), y)."""
    p_teacher = F.softmax(teacher_nat.float() / temperature, dim=1)
    kl = kl_div_per_sample(p_teacher, student_adv.float() / temperature)
    # nn.KLDivLoss's default 'mean' divides by batch x classes; the t^2 factor of the reference compensates.
    kl_element_mean = kl.sum() / student_adv.numel()
    ce = F.cross_entropy(student_nat.float(), labels)
    return alpha * temperature**2 * kl_element_mean + (1 - alpha) * ce


def iad_loss(student_nat: torch.Tensor, student_adv: torch.Tensor, teacher_nat: torch.Tensor,
             teacher_adv: torch.Tensor | None, labels: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """IAD-I: alpha * [KL(T(x) || S(x')) + (1 - w) KL(S(x) || S(x'))] + (1-alpha) CE(S(x), y), w = P_T(x')[y]^beta.

    As the reference (IAD-I.py, temperature 1): each KL is summed over classes and averaged over
    the batch (not ARD's element mean), both KL terms carry alpha, w has no gradient, and the
    introspection target S(x) keeps its gradient. teacher_adv=None is the warm-up (epochs before
    iad_warmup_epochs): the introspection term is absent, the rest is unchanged.
    """
    distill = kl_div_per_sample(F.softmax(teacher_nat.float(), dim=1), student_adv)
    if teacher_adv is not None:
        with torch.no_grad():
            w = F.softmax(teacher_adv.float(), dim=1).gather(1, labels[:, None]).squeeze(1).pow(beta)
        distill = distill + (1 - w) * kl_div_per_sample(F.softmax(student_nat.float(), dim=1), student_adv)
    ce = F.cross_entropy(student_nat.float(), labels)
    return alpha * distill.mean() + (1 - alpha) * ce
