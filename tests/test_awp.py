"""AWP (sat_awp, trades_awp) pinned against csdongxian/AWP on fixed tensors, plus its invariants and the loop hook.

The reference below is a transcription of csdongxian/AWP: AT_AWP/utils_awp.py (diff_in_weights,
add_into_weights, AdvWeightPerturb), trades_AWP/utils_awp.py (TradesAWP.calc_awp) and the
training steps of AT_AWP/train_cifar10.py (lines 338-363) and trades_AWP/train_trades_cifar.py
(train()), without their logging-only forward passes. x' is fixed (the shared PGD is pinned in
test_attacks.py), so both sides see the same adversarial batch.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import TrainConfig
from trainables.loop import Training
from trainables.methods import METHODS
from trainables.methods.awp import EPS, weight_perturbation

DIGITS = dict(dataset="digits", student="cnn_small", teacher="none", eps=0.1, attack_step_size=0.025, attack_steps=3)
GAMMA = 0.01
BETA = 6.0


# --- the reference, transcribed -----------------------------------------------------------------
def ref_diff_in_weights(model, proxy):
    diff_dict = OrderedDict()
    model_state_dict = model.state_dict()
    proxy_state_dict = proxy.state_dict()
    for (old_k, old_w), (new_k, new_w) in zip(model_state_dict.items(), proxy_state_dict.items()):
        if len(old_w.size()) <= 1:
            continue
        if 'weight' in old_k:
            diff_w = new_w - old_w
            diff_dict[old_k] = old_w.norm() / (diff_w.norm() + EPS) * diff_w
    return diff_dict


def ref_add_into_weights(model, diff, coeff=1.0):
    names_in_diff = diff.keys()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in names_in_diff:
                param.add_(coeff * diff[name])


class RefAdvWeightPerturb:
    """AT_AWP/utils_awp.py AdvWeightPerturb (calc_awp on -CE of the proxy on x')."""

    def __init__(self, model, proxy, proxy_optim, gamma):
        self.model, self.proxy, self.proxy_optim, self.gamma = model, proxy, proxy_optim, gamma

    def calc_awp(self, inputs_adv, targets):
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        loss = - F.cross_entropy(self.proxy(inputs_adv), targets)
        self.proxy_optim.zero_grad()
        loss.backward()
        self.proxy_optim.step()
        return ref_diff_in_weights(self.model, self.proxy)

    def perturb(self, diff):
        ref_add_into_weights(self.model, diff, coeff=1.0 * self.gamma)

    def restore(self, diff):
        ref_add_into_weights(self.model, diff, coeff=-1.0 * self.gamma)


class RefTradesAWP(RefAdvWeightPerturb):
    """trades_AWP/utils_awp.py TradesAWP: calc_awp on -(CE(proxy(x)) + beta KL(proxy(x) || proxy(x')))."""

    def calc_awp(self, inputs_adv, inputs_clean, targets, beta):
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        loss_natural = F.cross_entropy(self.proxy(inputs_clean), targets)
        loss_robust = F.kl_div(F.log_softmax(self.proxy(inputs_adv), dim=1),
                               F.softmax(self.proxy(inputs_clean), dim=1),
                               reduction='batchmean')
        loss = - 1.0 * (loss_natural + beta * loss_robust)
        self.proxy_optim.zero_grad()
        loss.backward()
        self.proxy_optim.step()
        return ref_diff_in_weights(self.model, self.proxy)


def ref_at_step(model, x_adv, y, opt, awp):
    """AT_AWP/train_cifar10.py, one batch after the attack (awp_warmup passed, no mixup, no l1)."""
    model.train()
    awp_diff = awp.calc_awp(inputs_adv=x_adv, targets=y)
    awp.perturb(awp_diff)
    robust_output = model(x_adv)
    robust_loss = F.cross_entropy(robust_output, y)
    opt.zero_grad()
    robust_loss.backward()
    opt.step()
    awp.restore(awp_diff)
    return awp_diff, robust_loss


def ref_trades_step(model, x_natural, x_adv, target, optimizer, awp):
    """trades_AWP/train_trades_cifar.py train(), one batch after perturb_input."""
    model.train()
    awp_diff = awp.calc_awp(inputs_adv=x_adv, inputs_clean=x_natural, targets=target, beta=BETA)
    awp.perturb(awp_diff)
    optimizer.zero_grad()
    logits_adv = model(x_adv)
    loss_robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(model(x_natural), dim=1),
                           reduction='batchmean')
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, target)
    loss = loss_natural + BETA * loss_robust
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    awp.restore(awp_diff)
    return awp_diff, loss


# --- fixtures -----------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """Conv (4-dim weight), BatchNorm (1-dim weight), linear (2-dim weight) with biases: every case of the filter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x_adv = (x + 0.1 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 10, (16,), generator=g)


def awp_method(name: str, x_adv: torch.Tensor | None = None, **changes):
    """Method `name` on the digits config; with x_adv, its attack returns that fixed x'."""
    m = METHODS.get(name)(TrainConfig.from_dict({**DIGITS, "method": name, "awp_gamma": GAMMA, **changes}))
    if x_adv is not None:
        m.adversarial = lambda student, x, y: x_adv
    return m


def our_step(m, model, x, y, opt, epoch=0):
    """One step as trainables.loop.Training.run_epoch takes it; returns (the unscaled perturbation, loss)."""
    loss = m.loss(model, None, x, y, epoch)
    diff = dict(m._pending[1]) if m._pending is not None else {}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    m.after_step(model)
    return diff, loss


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k].detach().float() - b[k].detach().float()).abs().max()) for k in a)


# --- pinned against the reference ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["sat_awp", "trades_awp"])
def test_one_step_matches_the_reference(batch, name):
    x, x_adv, y = batch
    ours, ref = TinyNet(), TinyNet()
    m = awp_method(name, x_adv, lr=0.1)
    if name == "sat_awp":
        # AT_AWP/train_cifar10.py: proxy_opt = SGD(proxy.parameters(), lr=0.01)
        awp = RefAdvWeightPerturb(ref, TinyNet(), None, GAMMA)
        awp.proxy_optim = torch.optim.SGD(awp.proxy.parameters(), lr=0.01)
        ref_diff, ref_loss = ref_at_step(ref, x_adv, y, sgd(ref), awp)
    else:
        # trades_AWP/train_trades_cifar.py: proxy_optim = SGD(proxy.parameters(), lr=args.lr)
        awp = RefTradesAWP(ref, TinyNet(), None, GAMMA)
        awp.proxy_optim = torch.optim.SGD(awp.proxy.parameters(), lr=0.1)
        ref_diff, ref_loss = ref_trades_step(ref, x, x_adv, y, sgd(ref), awp)
    diff, loss = our_step(m, ours.train(), x, y, sgd(ours))
    # the perturbation: conv and linear weights only, each with the norm of its weight
    assert list(diff) == list(ref_diff) == ["conv.weight", "fc.weight"]
    for k, v in diff.items():
        assert float(v.norm()) == pytest.approx(float(dict(TinyNet().named_parameters())[k].detach().norm()), rel=1e-5)
    # TRADES: the reference runs the proxy on x twice; the summed gradients differ from ours in rounding only
    assert max_abs_diff(diff, ref_diff) <= 2e-6
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6, abs=1e-7)
    params = dict(ours.named_parameters())
    assert max_abs_diff(params, dict(ref.named_parameters())) <= 1e-6
    if name == "sat_awp":  # the same single forward in train mode: the BatchNorm statistics agree too
        torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean, rtol=0, atol=1e-7)


def test_weight_perturbation_is_the_reference_diff_in_weights():
    model, proxy = TinyNet(), TinyNet()
    with torch.no_grad():
        for p in proxy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ours, ref = weight_perturbation(model, proxy), ref_diff_in_weights(model, proxy)
    assert list(ours) == list(ref) and max_abs_diff(ours, ref) == 0.0


# --- invariants ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sat_awp", "trades_awp"])
def test_weights_are_restored_to_old_plus_the_optimiser_update(batch, name):
    x, x_adv, y = batch
    model = TinyNet().train()
    old = {k: v.detach().clone() for k, v in model.named_parameters()}
    m = awp_method(name, x_adv)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # plain SGD: the update is -lr * grad
    loss = m.loss(model, None, x, y, epoch=0)
    perturbed = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.zero_grad()
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
    opt.step()
    m.after_step(model)
    for k, p in model.named_parameters():
        want = old[k].add(grads[k], alpha=-0.05)  # what SGD computes
        if k in ("conv.weight", "fc.weight"):
            assert not torch.equal(perturbed[k], old[k])  # the gradient was taken at the perturbed weights
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)
        else:  # never perturbed: exactly the optimiser's update
            assert torch.equal(perturbed[k], old[k]) and torch.equal(p.detach(), want)
    # with no update at all the weights come back to the old ones (to float rounding, as the reference)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    m.loss(model, None, x, y, epoch=0)
    m.after_step(model)
    assert max_abs_diff(dict(model.named_parameters()), before) <= 1e-7


def test_model_modes_are_restored_and_the_attack_sees_unperturbed_weights(batch):
    x, x_adv, y = batch
    model = TinyNet().train()
    model.bn.eval()  # a mixed state must survive too
    modes = [mod.training for mod in model.modules()]
    start = model.conv.weight.detach().clone()
    m = awp_method("sat_awp")
    seen = []
    attack = m.adversarial
    m.adversarial = lambda student, xx, yy: (seen.append(student.conv.weight.detach().clone()), attack(student, xx, yy))[1]
    loss = m.loss(model, None, x, y, epoch=0)
    assert torch.equal(seen[0], start) and not torch.equal(model.conv.weight, start)
    assert [mod.training for mod in model.modules()] == modes
    loss.backward()
    m.after_step(model)
    torch.testing.assert_close(model.conv.weight.detach(), start, rtol=0, atol=1e-7)
    assert [mod.training for mod in model.modules()] == modes


@pytest.mark.parametrize("name, plain", [("sat_awp", "sat"), ("trades_awp", "trades")])
def test_no_awp_before_the_warmup_or_at_gamma_zero(batch, name, plain):
    x, x_adv, y = batch
    want = awp_method(plain, x_adv).loss(TinyNet().train(), None, x, y, epoch=0)
    for changes, epoch in (({"awp_warmup": 2}, 1), ({"awp_gamma": 0.0}, 5)):
        model = TinyNet().train()
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        m = awp_method(name, x_adv, **changes)
        got = m.loss(model, None, x, y, epoch=epoch)
        assert m._pending is None and m._proxy is None  # not even the proxy is built
        assert max_abs_diff(dict(model.named_parameters()), start) == 0.0
        assert float(got.detach()) == float(want.detach())
    m = awp_method(name, x_adv, awp_warmup=2)
    m.loss(TinyNet().train(), None, x, y, epoch=2)
    assert m._pending is not None  # epoch 2 = the third epoch: AWP is on


def test_a_step_without_restore_is_refused(batch):
    x, x_adv, y = batch
    model = TinyNet().train()
    m = awp_method("sat_awp", x_adv)
    m.loss(model, None, x, y, epoch=0)
    with pytest.raises(RuntimeError, match="after_step"):
        m.loss(model, None, x, y, epoch=0)


def test_defaults_are_at_awp_cifar10_linf():
    cfg = TrainConfig()
    assert (cfg.awp_gamma, cfg.awp_warmup) == (0.01, 0)
    assert METHODS.get("sat_awp").proxy_lr == 0.01 and METHODS.get("trades_awp").proxy_lr is None


# --- the loop's hook ----------------------------------------------------------------------------
def test_the_loop_restores_after_every_step_and_other_methods_ignore_the_hook(monkeypatch):
    cfg = TrainConfig.from_dict({**DIGITS, "method": "sat_awp", "epochs": 1, "train_subset": 128, "batch_size": 64,
                                 "val_size": 64, "device": "cpu", "augment": False})
    training = Training(cfg)
    calls = []
    hook = training.method.after_step

    def after_step(student):
        assert training.method._pending is not None and student is training.model
        hook(student)
        calls.append(training.method._pending)

    monkeypatch.setattr(training.method, "after_step", after_step)
    metrics = training.run_epoch()
    assert calls == [None, None] and metrics["train_loss"] > 0
    assert METHODS.get("sat").after_step is METHODS.get("natural").after_step  # the base's no-op
