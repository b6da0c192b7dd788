"""evaluate(): the supplement's columns on a real tiny digits model and on real CIFAR images; the AutoAttack adapter."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainables.attacks.autoattack import STANDARD_ATTACKS, AutoAttackResult, autoattack
from trainables.evaluate import EVAL_ATTACKS, accuracy, evaluate, list_eval_attacks
from conftest import DigitsNet

EPS = 0.1  # digits pixels are coarse (/16); 8/255 barely moves this model
PER_BATCH = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf")
CHEAP_AA = dict(aa_version="custom", aa_attacks=["apgd-ce", "apgd-t"])
CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_test100.npz"


@pytest.fixture(scope="module")
def model(make_digits_net) -> nn.Module:
    return make_digits_net()


@pytest.fixture(scope="module")
def test32(digits) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_te, y_te = digits
    return x_te[:32].clone(), y_te[:32].clone()


@pytest.fixture(scope="module")
def full_eval(model, test32) -> dict[str, float]:
    """Every column once (AutoAttack as the cheap APGD-CE + APGD-T subset), shared by several tests."""
    x, y = test32
    return evaluate(model, x, y, eps=EPS, seed=0, **CHEAP_AA)


# ---------------------------------------------------------------- evaluate() on the digits model


def test_every_column_is_returned_in_range(full_eval):
    assert list(full_eval) == list(PER_BATCH) + ["autoattack_custom"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in full_eval.values())


def test_robust_columns_are_below_clean_and_aa_below_pgd(full_eval):
    clean = full_eval["clean"]
    assert clean > 0.85, "the fixture model did not learn digits"
    for name, value in full_eval.items():
        assert value <= clean, name
    assert full_eval["pgd_sat"] < clean  # the model is not constant: the attack bites
    noise = 1 / 32  # one image
    for name in ("fgsm", "pgd_sat", "pgd_trades", "cw_inf"):
        assert full_eval["autoattack_custom"] <= full_eval[name] + noise, name


def test_non_standard_autoattack_is_never_called_autoattack(full_eval):
    assert "autoattack" not in full_eval


def test_list_eval_attacks_names_every_column():
    assert sorted(list_eval_attacks()) == sorted(PER_BATCH + ("autoattack",))
    assert set(EVAL_ATTACKS.names()) == set(PER_BATCH)


def test_eps_zero_makes_every_per_batch_column_equal_clean(model, test32):
    x, y = test32
    res = evaluate(model, x, y, attacks=PER_BATCH, eps=0.0)
    assert len(set(res.values())) == 1


def test_unknown_attack_name_lists_the_allowed_ones(model, test32):
    x, y = test32
    with pytest.raises(ValueError, match="pgd_sat") as info:
        evaluate(model, x, y, attacks=("clean", "pgd_madry"))
    assert "pgd_madry" in str(info.value) and "autoattack" in str(info.value)


def test_deterministic_given_seed_and_independent_of_other_columns(model, test32, full_eval):
    x, y = test32
    a = evaluate(model, x, y, attacks=PER_BATCH, eps=EPS, seed=0, batch_size=10)
    b = evaluate(model, x, y, attacks=PER_BATCH, eps=EPS, seed=0, batch_size=10)
    assert a == b
    # A column does not depend on which other columns ran before it (one generator per column).
    alone = evaluate(model, x, y, attacks=("pgd_sat",), eps=EPS, seed=0)
    assert alone["pgd_sat"] == full_eval["pgd_sat"]


def test_mode_restored_eval_during_and_no_param_grads(model, test32):
    x, y = test32
    model.train()
    model.head.eval()  # a submodule whose mode differs from its parent's
    before = {name: m.training for name, m in model.named_modules()}
    seen: list[bool] = []
    hook = model.body[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        evaluate(model, x[:8], y[:8], attacks=PER_BATCH, eps=EPS)
        assert {name: m.training for name, m in model.named_modules()} == before
    finally:
        hook.remove()
        model.eval()
    assert seen and not any(seen), "a forward pass ran in train mode"
    assert all(p.grad is None for p in model.parameters())


def test_accuracy_helper_matches_a_hand_count(model, test32):
    x, y = test32
    with torch.no_grad():
        want = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy(model, x, y, batch_size=7, device="cpu") == pytest.approx(want)


def test_autocast_of_the_caller_is_switched_off(model, test32):
    x, y = test32
    want = evaluate(model, x, y, attacks=("clean", "pgd_sat"), eps=EPS)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = evaluate(model, x, y, attacks=("clean", "pgd_sat"), eps=EPS)
    assert got == want


@pytest.mark.parametrize("bad, why", [
    (lambda x: (x * 255).to(torch.uint8), "float"),
    (lambda x: x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous(), "channels-last"),
    (lambda x: x * 2 - 1, r"\[0,1\]"),
    (lambda x: x[:, 0], "float"),
])
def test_bad_images_are_refused(model, test32, bad, why):
    x, y = test32
    with pytest.raises(ValueError, match=why):
        evaluate(model, bad(x), y, attacks=("clean",))


def test_non_fp32_model_is_refused(test32):
    x, y = test32
    with pytest.raises(ValueError, match="fp32"):
        evaluate(DigitsNet().to(torch.bfloat16), x, y, attacks=("clean",))


# ---------------------------------------------------------------- the AutoAttack adapter


def test_standard_autoattack_on_digits(model, test32, capsys, caplog):
    """The real standard run; at eps 0.3 APGD-CE already breaks every point, so it ends in seconds."""
    x, y = test32
    before = torch.get_rng_state()
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        res = autoattack(model, x[:16], y[:16], eps=0.3)
    assert isinstance(res, AutoAttackResult)
    assert res.is_standard and res.version == "standard" and res.n == 16
    assert res.attacks_run == list(STANDARD_ATTACKS) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    pgd = evaluate(model, x[:16], y[:16], attacks=("pgd_sat",), eps=0.3)["pgd_sat"]
    assert 0.0 <= res.robust_accuracy <= pgd + 1 / 16
    assert torch.equal(torch.get_rng_state(), before), "pyautoattack reseeded the caller's RNG"
    assert capsys.readouterr().out == "", "something printed instead of logging"
    assert any(r.name == "auto-attack" for r in caplog.records)


def test_custom_autoattack_covering_the_standard_set_counts_as_standard(model, test32):
    x, y = test32
    res = autoattack(model, x[:8], y[:8], eps=0.3, version="custom", attacks=list(reversed(STANDARD_ATTACKS)))
    assert res.is_standard and res.version == "custom"
    res = evaluate(model, x[:8], y[:8], attacks=("autoattack",), eps=0.3, aa_version="custom",
                   aa_attacks=list(STANDARD_ATTACKS))
    assert list(res) == ["autoattack"]


def test_custom_subset_is_not_standard_and_restores_mode(model, test32):
    x, y = test32
    model.train()
    try:
        res = autoattack(model, x[:8], y[:8], eps=EPS, version="custom", attacks=["apgd-ce"])
        assert model.training and model.body.training
    finally:
        model.eval()
    assert not res.is_standard and res.attacks_run == ["apgd-ce"] and 0.0 <= res.robust_accuracy <= 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(version="custom"), "attacks"),
    (dict(version="custom", attacks=["pgd"]), "unknown"),
    (dict(version="standard", attacks=["apgd-ce"]), "custom"),
    (dict(version="rand"), "allowed"),
])
def test_autoattack_argument_errors(model, test32, kwargs, match):
    x, y = test32
    with pytest.raises(ValueError, match=match):
        autoattack(model, x[:4], y[:4], eps=EPS, **kwargs)


@pytest.mark.slow
def test_full_standard_autoattack_below_pgd_at_eps_0_1(model, test32, full_eval):
    """The brief's check at the test eps: standard AA on 32 digits (about 10 s on this CPU)."""
    x, y = test32
    res = autoattack(model, x, y, eps=EPS)
    assert res.is_standard
    for name in ("fgsm", "pgd_sat", "pgd_trades", "cw_inf"):
        assert res.robust_accuracy <= full_eval[name] + 1 / 32, name


# ---------------------------------------------------------------- real CIFAR-10 images


class TinyCifarNet(nn.Module):
    """Two convs and a linear head: enough to exercise shapes, not to classify well."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.skipif(not CIFAR.exists(), reason=f"CIFAR sample {CIFAR} is absent (shared data not provisioned)")
def test_real_cifar_images_through_a_tiny_conv_net():
    data = np.load(CIFAR)
    raw, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]).long()
    assert raw.dtype == torch.uint8 and raw.shape == (100, 32, 32, 3) and labels.shape == (100,)
    torch.manual_seed(0)
    net = TinyCifarNet().eval()
    with pytest.raises(ValueError):
        evaluate(net, raw, labels, attacks=("clean",))  # raw uint8 NHWC is refused, not guessed
    images = raw.permute(0, 3, 1, 2).float() / 255
    res = evaluate(net, images, labels, eps=8 / 255, batch_size=64, aa_version="custom", aa_attacks=["apgd-ce"])
    assert list(res) == list(PER_BATCH) + ["autoattack_custom"]
    assert all(0.0 <= v <= 1.0 for v in res.values())
    assert all(v <= res["clean"] + 1e-9 for v in res.values())
