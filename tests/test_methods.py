"""Methods on fixed tensors: SAT's attack mode, IAD's warm-up and post-warm-up losses, the attack flag behind eps checks."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.attacks import cross_entropy
from trainables.config import TrainConfig
from trainables.methods import METHODS, ard_loss, iad_loss

DIGITS = dict(dataset="digits", student="cnn_small", teacher="digits_cnn_medium_trades", eps=0.1,
              attack_step_size=0.025, attack_steps=4)


class BNNet(nn.Module):
    """A tiny classifier with BatchNorm, so train and eval mode give different logits."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        with torch.no_grad():  # running statistics far from any batch's, so the modes disagree
            self.body[2].running_mean.fill_(3.0)
            self.body[2].running_var.fill_(9.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def method(name: str, **changes):
    cfg = TrainConfig.from_dict({**DIGITS, "method": name, **changes})
    return METHODS.get(name)(cfg)


# --- SAT: the attack's BatchNorm mode -----------------------------------------------------------
@pytest.mark.parametrize("mode, attack_flags", [("train", [True] * 4), ("eval", [False] * 4)])
def test_sat_attacks_in_its_configured_mode_and_restores_train_mode(batch, mode, attack_flags):
    x, y = batch
    student = BNNet(0).train()
    bn = student.body[2]
    seen: list[bool] = []
    bn.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    tracked = int(bn.num_batches_tracked)
    torch.manual_seed(0)
    method("sat", sat_attack_mode=mode).loss(student, None, x, y, epoch=0)
    # attack_steps forward passes in the attack's mode, then the outer CE(S(x'), y) in train mode
    assert seen == attack_flags + [True]
    assert student.training and bn.training
    # Madry's TF graph updates BatchNorm's moving averages on every training-mode pass, attack steps included.
    assert int(bn.num_batches_tracked) - tracked == (5 if mode == "train" else 1)


def test_sat_default_is_the_reference_train_mode_and_the_modes_give_different_x_adv(batch):
    assert TrainConfig().sat_attack_mode == "train"
    x, y = batch
    adv = {}
    for mode in ("train", "eval"):
        student = BNNet(0).train()
        torch.manual_seed(0)
        m = method("sat", sat_attack_mode=mode)
        adv[mode] = m.attack(student, x, cross_entropy(y), start="uniform", mode=mode)
    assert (adv["train"] != adv["eval"]).float().mean() > 0.1


# --- IAD: warm-up and after -------------------------------------------------------------------
class FixedAttack:
    """Replaces the inner attack with a fixed x' so the loss can be recomputed by hand."""

    def __init__(self, x_adv: torch.Tensor) -> None:
        self.x_adv = x_adv

    def __call__(self, student, x, y):
        return self.x_adv


def _iad_setup(batch, monkeypatch, **changes):
    x, y = batch
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    m = method("iad", iad_warmup_epochs=2, **changes)
    monkeypatch.setattr(m, "adversarial", FixedAttack(x_adv))
    student, teacher = BNNet(0).train(), BNNet(1).eval()
    return m, student, teacher, x, x_adv, y


def test_iad_warmup_loss_is_ten_times_the_old_ard_t1_loss(batch, monkeypatch):
    m, student, teacher, x, x_adv, y = _iad_setup(batch, monkeypatch, ard_alpha=1.0)
    got = m.loss(student, teacher, x, y, epoch=1)  # epoch 1 < iad_warmup_epochs = 2
    with torch.no_grad():
        s_nat, s_adv, t_nat = student(x), student(x_adv), teacher(x)
    # IAD-I's warm-up KL is summed over the 10 classes and averaged over the batch.
    want = (F.softmax(t_nat, 1) * (F.log_softmax(t_nat, 1) - F.log_softmax(s_adv, 1))).sum(1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() == pytest.approx(10 * ard_loss(s_nat, s_adv, t_nat, y, 1.0, 1.0).item(), rel=1e-5)


def test_iad_after_warmup_adds_introspection_weighted_by_teacher_trust(batch, monkeypatch):
    m, student, teacher, x, x_adv, y = _iad_setup(batch, monkeypatch, ard_alpha=0.9, iad_beta=0.1)
    got = m.loss(student, teacher, x, y, epoch=2)
    with torch.no_grad():
        s_nat, s_adv, t_nat, t_adv = student(x), student(x_adv), teacher(x), teacher(x_adv)
    w = F.softmax(t_adv, 1)[torch.arange(len(y)), y] ** 0.1
    log_s_adv = F.log_softmax(s_adv, 1)
    distill = (F.softmax(t_nat, 1) * (F.log_softmax(t_nat, 1) - log_s_adv)).sum(1)
    introspect = (F.softmax(s_nat, 1) * (F.log_softmax(s_nat, 1) - log_s_adv)).sum(1)
    want = 0.9 * (distill + (1 - w) * introspect).mean() + 0.1 * F.cross_entropy(s_nat, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() == pytest.approx(iad_loss(s_nat, s_adv, t_nat, t_adv, y, 0.9, 0.1).item(), rel=1e-5)
    # and it is not the warm-up loss
    assert not math.isclose(got.item(), iad_loss(s_nat, s_adv, t_nat, None, y, 0.9, 0.1).item(), rel_tol=1e-3)


def test_iad_attacks_in_train_mode_like_ard(batch):
    x, y = batch
    student = BNNet(0).train()
    seen: list[bool] = []
    student.body[2].register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    method("iad").adversarial(student, x, y)
    assert seen == [True] * DIGITS["attack_steps"] and student.training


# --- which methods attack -----------------------------------------------------------------------
def test_only_natural_trains_without_an_attack():
    assert {n for n in METHODS.names() if not METHODS.get(n).attacks} == {"natural"}


# --- model selection: the validation attack ---------------------------------------------------
SELECT = dict(dataset="digits", student="cnn_small", method="natural", teacher="none", batch_size=64, eps=0.1,
              attack_step_size=0.025, device="cpu", epochs=1, train_subset=128, val_batch_size=512, num_threads=1)


@pytest.mark.parametrize("val_attack", ["pgd_trades", "cw_inf", "fgsm"])
def test_val_size_0_with_an_evaluation_column_is_that_column_on_the_test_set(val_attack):
    from trainables.data import to_float
    from trainables.evaluate import evaluate
    from trainables.loop import Training

    training = Training(TrainConfig.from_dict({**SELECT, "val_size": 0, "val_attack": val_attack}))
    clean, robust = training.validate()  # epoch 0: the generator seed is seed * 7919 + 0 = 0
    s = training.splits
    want = evaluate(training.model, to_float(s.test_x), s.test_y, attacks=("clean", val_attack), eps=0.1,
                    batch_size=512, seed=0)
    assert (clean, robust) == (want["clean"], want[val_attack])


def test_the_default_validation_attack_is_the_cheap_pgd_and_differs_from_pgd_trades():
    from trainables.loop import Training

    cheap = Training(TrainConfig.from_dict({**SELECT, "val_size": 300}))
    assert cheap.cfg.val_attack == "pgd"
    list(cheap)  # one epoch, so the model is not a random one
    trades = Training(TrainConfig.from_dict({**SELECT, "val_size": 300, "val_attack": "pgd_trades"}))
    trades.model.load_state_dict(cheap.model.state_dict())
    trades.epoch = cheap.epoch
    # PGD-10 at step 0.025 reaches the eps = 0.1 boundary; PGD_TRADES' step 0.003 x 20 cannot.
    assert cheap.validate()[1] < trades.validate()[1]
