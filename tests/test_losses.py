"""Every method's outer loss against values computed by hand on small logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.methods import ard_loss, iad_loss, parse_rsl_source, rslad_loss, trades_loss

LN3 = math.log(3.0)


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) written out by hand."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


# Logits with hand-known softmaxes: [ln3, 0] -> [3/4, 1/4]; [0, 0] -> [1/2, 1/2]; [0, ln3] -> [1/4, 3/4].
A, U, B = [LN3, 0.0], [0.0, 0.0], [0.0, LN3]
PA, PU, PB = [0.75, 0.25], [0.5, 0.5], [0.25, 0.75]


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("rsl_source, t1, t2", [
    ("nat-nat-nat", PA, PA),
    ("nat-adv-nat", PA, PB),
    ("nat-adv-adv", PA, PB),
    ("adv-adv-adv", PB, PB),
])
def test_rslad_loss_picks_the_soft_labels_of_its_rsl_source(rsl_source, t1, t2):
    alpha, scale = 0.75, 0.1
    got = rslad_loss(t(U), t(A), t(A), t(B), alpha, rsl_source, scale)
    want = scale * ((1 - alpha) * kl(t1, PU) + alpha * kl(t2, PA))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_rslad_default_is_paper_ratio_and_tenth_scale():
    got = rslad_loss(t(U), t(B), t(A), None, 5 / 6)
    want = 0.1 * ((1 / 6) * kl(PA, PU) + (5 / 6) * kl(PA, PB))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_rslad_alpha_extremes_keep_one_term():
    only_nat = rslad_loss(t(U), t(B), t(A), None, 0.0, kl_scale=1.0)
    only_adv = rslad_loss(t(U), t(B), t(A), None, 1.0, kl_scale=1.0)
    assert only_nat.item() == pytest.approx(kl(PA, PU), rel=1e-5)
    assert only_adv.item() == pytest.approx(kl(PA, PB), rel=1e-5)


def test_rslad_loss_is_a_batch_mean_of_per_sample_kl():
    got = rslad_loss(t(U, U), t(U, B), t(A, A), None, 1.0, kl_scale=1.0)
    assert got.item() == pytest.approx((kl(PA, PU) + kl(PA, PB)) / 2, rel=1e-5)


def test_rslad_loss_is_zero_when_student_matches_teacher_and_grads_flow():
    s = t(A).requires_grad_(True)
    loss = rslad_loss(s, s, t(A), None, 0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert s.grad is not None


def test_rslad_loss_refuses_missing_adversarial_labels():
    with pytest.raises(ValueError, match="teacher_adv"):
        rslad_loss(t(U), t(U), t(A), None, 0.5, "nat-adv-nat")
    with pytest.raises(ValueError, match="allowed: nat-nat-nat"):
        parse_rsl_source("nat-nat")


def test_trades_loss_by_hand():
    labels = torch.tensor([0])
    got = trades_loss(t(A), t(B), labels, beta=6.0)
    want = -math.log(0.75) + 6.0 * kl(PA, PB)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_ard_loss_by_hand_uses_element_mean_and_t_squared():
    labels = torch.tensor([1])
    temp = 2.0
    p_t = torch.softmax(t(A) / temp, 1)[0].tolist()
    p_s = torch.softmax(t(B) / temp, 1)[0].tolist()
    # element mean over batch (1) x classes (2), times t^2; alpha=0.8 keeps 0.2 CE on the clean logits
    want = 0.8 * temp**2 * kl(p_t, p_s) / 2 + 0.2 * -math.log(0.5)
    got = ard_loss(t(U), t(B), t(A), labels, alpha=0.8, temperature=temp)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_iad_loss_by_hand_weights_introspection_by_teacher_trust():
    labels = torch.tensor([0])
    beta = 0.1
    w = 0.75**beta  # teacher_adv = A puts 3/4 on the true class
    # IAD-I multiplies BOTH KL terms by alpha (an earlier version dropped it: +9.9 % at alpha 0.9).
    want = 0.9 * (kl(PA, PB) + (1 - w) * kl(PU, PB)) + (1 - 0.9) * -math.log(0.5)
    got = iad_loss(t(U), t(B), t(A), t(A), labels, alpha=0.9, beta=beta)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_iad_warmup_is_per_sample_kl_not_ards_element_mean():
    # Warm-up (teacher_adv=None): alpha * KL(T(x) || S(x')) summed over classes, averaged over the
    # batch, + (1-alpha) CE; no introspection term. Two samples, two classes, by hand:
    labels = torch.tensor([0, 1])
    want = 0.8 * (kl(PA, PB) + kl(PB, PU)) / 2 + 0.2 * (-math.log(0.5) - math.log(0.75)) / 2
    got = iad_loss(t(U, B), t(B, U), t(A, B), None, labels, alpha=0.8, beta=0.1)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_iad_warmup_is_ten_times_ards_t1_loss_on_ten_classes():
    # The mismatch this pins: warm-up used to be ard_loss(t=1), whose KL is an element mean over
    # batch x classes; IAD-I's is a per-sample sum, i.e. C = 10 times larger on CIFAR-10 (alpha = 1).
    g = torch.Generator().manual_seed(0)
    s_nat, s_adv, t_nat = (torch.randn(8, 10, generator=g, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(0, 10, (8,), generator=g)
    warmup = iad_loss(s_nat, s_adv, t_nat, None, labels, alpha=1.0, beta=0.1)
    ard_t1 = ard_loss(s_nat, s_adv, t_nat, labels, alpha=1.0, temperature=1.0)
    assert warmup.item() == pytest.approx(10 * ard_t1.item(), rel=1e-5)


def _iad_i_reference(s_nat, s_adv, t_nat, t_adv, labels, alpha, beta, warmup):
    """IAD-I.py's loss written with torch's KLDivLoss(reduce=False) exactly as the reference composes it (temp 1)."""
    kl_elem = torch.nn.KLDivLoss(reduction="none")
    n = len(s_adv)
    distill = alpha * (1 / n) * torch.sum(kl_elem(F.log_softmax(s_adv, 1), F.softmax(t_nat, 1)).sum(dim=1))
    ce = (1 - alpha) * F.cross_entropy(s_nat, labels)
    if warmup:
        return distill + ce
    trust = torch.stack([F.softmax(t_adv, 1)[i][labels[i]].pow(beta).detach() for i in range(n)])
    introspect = alpha * (1 / n) * torch.sum(kl_elem(F.log_softmax(s_adv, 1), F.softmax(s_nat, 1)).sum(dim=1)
                                             .mul(1 - trust))
    return distill + introspect + ce


@pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "after_warmup"])
@pytest.mark.parametrize("alpha", [1.0, 0.9])
def test_iad_loss_and_gradients_equal_the_reference_composition(warmup, alpha):
    g = torch.Generator().manual_seed(1)
    s_nat0, s_adv0, t_nat, t_adv = (3 * torch.randn(16, 10, generator=g, dtype=torch.float32) for _ in range(4))
    labels = torch.randint(0, 10, (16,), generator=g)
    grads = []
    for fn in (lambda a, b: iad_loss(a, b, t_nat, None if warmup else t_adv, labels, alpha, 0.1),
               lambda a, b: _iad_i_reference(a, b, t_nat, t_adv, labels, alpha, 0.1, warmup)):
        s_nat, s_adv = s_nat0.clone().requires_grad_(True), s_adv0.clone().requires_grad_(True)
        loss = fn(s_nat, s_adv)
        loss.backward()
        grads.append((loss.detach(), s_nat.grad, s_adv.grad))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
