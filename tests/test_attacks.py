"""Invariants of the one PGD (every start, every objective) and the objectives' values by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.attacks import (
    cross_entropy,
    cw_margin,
    fgsm,
    kl_to_model,
    kl_to_target,
    model_mode,
    pgd,
)
from conftest import DigitsNet


EPS = 0.1
STARTS = ["none", "uniform", "gaussian"]
OBJECTIVES = ["ce", "kl_target", "kl_model", "cw"]


# ---------------------------------------------------------------- fixtures: a real, tiny classifier


@pytest.fixture(scope="module")
def trained(make_digits_net) -> nn.Module:
    return make_digits_net()


@pytest.fixture(scope="module")
def other(make_digits_net) -> nn.Module:
    """A second, differently seeded model: the moving target of kl_to_model."""
    return make_digits_net(steps=100, seed=1)


@pytest.fixture
def batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_te, y_te = digits
    return x_te[:64].clone(), y_te[:64].clone()


def make_objective(name: str, model: nn.Module, other: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Objective `name` for a batch; targets are computed in eval mode without grad."""
    if name == "ce":
        return cross_entropy(y)
    if name == "kl_target":
        with torch.no_grad(), model_mode(model, "eval"):
            return kl_to_target(F.softmax(model(x), dim=1))
    if name == "kl_model":
        return kl_to_model(other)
    if name == "cw":
        return cw_margin(y, kappa=50.0)
    raise AssertionError(name)


def objective_value(objective, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), model_mode(model, "eval"):
        return objective(model(x), x).item()


# ---------------------------------------------------------------- PGD invariants


@pytest.mark.parametrize("objective_name", OBJECTIVES)
@pytest.mark.parametrize("start", STARTS)
def test_pgd_stays_in_ball_and_box_and_leaves_params_alone(trained, other, batch, start, objective_name):
    x, y = batch
    objective = make_objective(objective_name, trained, other, x, y)
    params_before = [p.detach().clone() for p in trained.parameters()]
    assert all(p.grad is None for p in trained.parameters())

    x_adv = pgd(trained, x, objective, eps=EPS, step_size=0.02, steps=5, start=start,
                generator=torch.Generator().manual_seed(0))

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert all(p.grad is None for p in trained.parameters()), "the attack created a parameter .grad"
    assert all(torch.equal(a, b) for a, b in zip(params_before, trained.parameters()))


def test_pgd_does_not_change_existing_parameter_grads(trained, batch):
    x, y = batch
    for p in trained.parameters():
        p.grad = torch.full_like(p, 0.5)
    try:
        pgd(trained, x, cross_entropy(y), eps=EPS, step_size=0.02, steps=3)
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in trained.parameters())
    finally:
        for p in trained.parameters():
            p.grad = None


@pytest.mark.parametrize("attack_mode, expect_training", [("eval", False), ("train", True)])
@pytest.mark.parametrize("parent_training", [True, False])
def test_pgd_sets_mode_during_attack_and_restores_each_submodule(batch, parent_training, attack_mode,
                                                                 expect_training):
    x, y = batch
    torch.manual_seed(0)
    model = DigitsNet()
    model.train(parent_training)
    model.head.train(not parent_training)  # a submodule whose mode differs from its parent's
    before = {name: m.training for name, m in model.named_modules()}
    seen: list[bool] = []
    hook = model.body[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        pgd(model, x, cross_entropy(y), eps=EPS, step_size=0.02, steps=2, mode=attack_mode)
    finally:
        hook.remove()
    assert seen and all(t is expect_training for t in seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_model_mode_restores_after_an_exception():
    model = DigitsNet().train()
    model.head.eval()
    with pytest.raises(RuntimeError):
        with model_mode(model, "eval"):
            assert not model.training and not model.body.training
            raise RuntimeError("boom")
    assert model.training and model.body.training and not model.head.training


@pytest.mark.parametrize("start", STARTS)
def test_eps_zero_returns_x(trained, batch, start):
    x, y = batch
    x_adv = pgd(trained, x, cross_entropy(y), eps=0.0, step_size=0.02, steps=5, start=start,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, x)
    assert torch.equal(fgsm(trained, x, cross_entropy(y), eps=0.0), x)


def test_fgsm_is_exactly_one_step_of_size_eps(trained, batch):
    x, y = batch
    x_req = x.clone().requires_grad_(True)
    with model_mode(trained, "eval"):
        (grad,) = torch.autograd.grad(F.cross_entropy(trained(x_req), y, reduction="sum"), x_req)
    expected = (x + EPS * grad.sign()).clamp(0, 1)

    x_adv = fgsm(trained, x, cross_entropy(y), eps=EPS)

    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)
    # Wherever the box does not clip and the gradient is non-zero, the step is exactly eps.
    free = (grad != 0) & (expected > 0) & (expected < 1)
    assert free.any()
    torch.testing.assert_close((x_adv - x).abs()[free], torch.full_like(x[free], EPS), rtol=0, atol=1e-6)


def test_gaussian_start_has_std_one_thousandth():
    x = torch.full((64, 1, 32, 32), 0.5)  # mid-grey: no clamping at 0 or 1
    x0 = pgd(nn.Flatten(), x, lambda z, xa: z.sum(), eps=EPS, step_size=0.0, steps=0, start="gaussian", generator=torch.Generator().manual_seed(0))
    delta = x0 - x
    assert delta.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(delta.mean().item()) < 1e-4


def test_uniform_start_fills_the_ball_and_is_seeded():
    x = torch.full((16, 1, 32, 32), 0.5)
    ident = nn.Flatten()
    a = pgd(ident, x, lambda z, xa: z.sum(), eps=EPS, step_size=0.0, steps=0, start="uniform",
            generator=torch.Generator().manual_seed(3))
    b = pgd(ident, x, lambda z, xa: z.sum(), eps=EPS, step_size=0.0, steps=0, start="uniform",
            generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    delta = a - x
    assert delta.abs().max().item() <= EPS + 1e-7 and delta.abs().max().item() > 0.99 * EPS
    assert delta.std().item() == pytest.approx(EPS / math.sqrt(3), rel=0.05)  # std of U(-eps, eps)


def test_unknown_start_is_rejected(trained, batch):
    x, y = batch
    with pytest.raises(ValueError, match="allowed"):
        pgd(trained, x, cross_entropy(y), eps=EPS, step_size=0.02, steps=1, start="normal")


# kl_model is left out on purpose: its target T(x') moves with x' and the gradient treats it as
# a constant (no grad through the teacher), so the full objective need not rise; on these digits
# models it fell (9.0 -> 3.5), plausibly because the perturbation fools both models alike.
# A fixed target is covered below.
@pytest.mark.parametrize("objective_name", ["ce", "kl_target", "cw"])
def test_attack_increases_its_objective(trained, other, batch, objective_name):
    x, y = batch
    objective = make_objective(objective_name, trained, other, x, y)
    x_adv = pgd(trained, x, objective, eps=EPS, step_size=0.02, steps=10, start="none")
    assert objective_value(objective, trained, x_adv) > objective_value(objective, trained, x) + 1e-3


def test_kl_to_model_with_an_input_independent_target_is_an_ascent(trained, other, batch):
    x, _ = batch
    with torch.no_grad():
        fixed = other(x)  # the target no longer moves with x'
    objective = kl_to_model(lambda x_adv: fixed)
    x_adv = pgd(trained, x, objective, eps=EPS, step_size=0.02, steps=10, start="none")
    assert objective_value(objective, trained, x_adv) > objective_value(objective, trained, x) + 1e-3


def test_robust_accuracy_is_below_clean_on_a_trained_model(trained, digits):
    _, _, x, y = digits
    with torch.no_grad(), model_mode(trained, "eval"):
        clean = (trained(x).argmax(1) == y).float().mean().item()
        x_adv = pgd(trained, x, cross_entropy(y), eps=EPS, step_size=0.01, steps=20,
                    generator=torch.Generator().manual_seed(0))
        robust = (trained(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.85, "the fixture model did not learn digits"
    assert robust < clean - 0.1


# ---------------------------------------------------------------- objectives by hand

LN3 = math.log(3.0)


def test_cross_entropy_is_a_batch_sum():
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]])  # softmaxes [1/2, 1/2] and [3/4, 1/4]
    labels = torch.tensor([0, 1])
    got = cross_entropy(labels)(logits, logits).item()
    assert got == pytest.approx(math.log(2) + math.log(4), rel=1e-6)


def test_kl_to_target_by_hand():
    target = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5) + 0.0
    assert kl_to_target(target)(logits, logits).item() == pytest.approx(want, rel=1e-6)


def test_kl_to_model_uses_the_target_model_on_x_adv():
    fixed = torch.tensor([[LN3, 0.0]])  # target model's softmax: [3/4, 1/4]
    seen = []

    def target_model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return fixed

    x_adv = torch.zeros(1, 1)
    got = kl_to_model(target_model)(torch.tensor([[0.0, 0.0]]), x_adv).item()
    assert seen and seen[0] is x_adv
    assert got == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)


def test_kl_with_zero_probability_target_entries_is_finite():
    target = torch.tensor([[1.0, 0.0, 0.0]])
    logits = torch.tensor([[0.0, -1e4, 0.0]], requires_grad=True)  # q is ~0 exactly where p is 0
    value = kl_to_target(target)(logits, logits)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(math.log(2.0), rel=1e-5)  # q = [1/2, 0, 1/2]


def test_cw_margin_by_hand_with_kappa_clamp():
    logits = torch.tensor([[1.0, 5.0, 2.0], [1.0, 5.0, 2.0]])
    labels = torch.tensor([0, 1])
    # row 0: max other 5 - true 1 = 4; row 1: max other 2 - true 5 = -3
    assert cw_margin(labels, kappa=50.0)(logits, logits).item() == pytest.approx(4.0 - 3.0)
    assert cw_margin(labels, kappa=3.0)(logits, logits).item() == pytest.approx(3.0 - 3.0)
    # past kappa the margin stops pushing: zero gradient for the clamped row
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cw_margin(labels, kappa=3.0)(z, z), z)
    assert torch.equal(grad[0], torch.zeros(3))
    assert torch.equal(grad[1], torch.tensor([0.0, -1.0, 1.0]))
