"""TrainConfig: paper defaults, validation errors that name the key, round trips."""

import dataclasses

import pytest

from trainables.config import ConfigError, TrainConfig, config_fields


def test_defaults_are_the_rslad_paper_setting():
    cfg = TrainConfig()
    assert (cfg.dataset, cfg.student, cfg.teacher, cfg.method) == ("cifar10", "resnet18", "wrn34_10_trades", "rslad")
    assert cfg.alpha == pytest.approx(5 / 6) and cfg.alpha / (1 - cfg.alpha) == pytest.approx(5.0)
    assert cfg.rsl_source == "nat-nat-nat" and cfg.kl_scale == 0.1
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (300, 0.1, 0.9, 2e-4, 128)
    assert cfg.milestone_epochs() == [215, 260, 285]
    assert cfg.eps == pytest.approx(8 / 255) and cfg.attack_step_size == pytest.approx(2 / 255)
    assert (cfg.attack_steps, cfg.seed, cfg.device) == (10, 0, "auto")
    cfg.validate()


def test_every_field_has_a_docstring():
    import inspect

    import trainables.config as module

    source = inspect.getsource(module.TrainConfig)
    for name in config_fields():
        # the line after the field's definition is its docstring
        after = source.split(f"\n    {name}:", 1)[1].split("\n", 2)
        assert after[1].strip().startswith('"""'), f"{name} has no docstring"


def test_milestones_rescale_to_the_run_length():
    assert TrainConfig(epochs=100).milestone_epochs() == [72, 87, 95]
    assert TrainConfig(epochs=6, lr_milestones=(4, 5), lr_milestones_ref=6).milestone_epochs() == [4, 5]


@pytest.mark.parametrize("values, message", [
    ({"alpah": 0.5}, "unknown TrainConfig key 'alpah'; known keys: dataset"),
    ({"alpha": 1.5}, "alpha=1.5 out of range; allowed: <= 1.0"),
    ({"alpha": -0.1}, "alpha=-0.1 out of range; allowed: >= 0.0"),
    ({"epochs": 0}, "epochs=0 out of range; allowed: >= 1"),
    ({"epochs": 2.5}, "epochs=2.5 must be an integer"),
    ({"lr": 0}, "lr=0.0 out of range; allowed: > 0.0"),
    ({"rsl_source": "adv-nat-nat"}, "rsl_source='adv-nat-nat' is not allowed; allowed: nat-nat-nat"),
    ({"dataset": "mnist"}, "dataset='mnist' is not allowed; allowed: cifar10, cifar100, digits"),
    ({"student": "resnet19"}, "student='resnet19' is not registered; allowed:"),
    ({"method": "madry"},
     "method='madry' is not registered; allowed: ard, iad, natural, rslad, sat, sat_awp, trades, trades_awp"),
    ({"teacher": "wrn99"}, "teacher='wrn99' is not registered"),
    ({"method": "rslad", "teacher": "none"}, "method='rslad' needs a teacher"),
    ({"device": "tpu"}, "device='tpu' is not allowed"),
    ({"amp": "yes"}, "amp='yes' must be true or false"),
    ({"lr_milestones": [260, 215]}, "lr_milestones=[260, 215] must be increasing"),
    ({"attack_step_size": 0.5}, "attack_step_size=0.5 is larger than eps"),
    ({"method": "sat", "teacher": "none", "eps": 0},
     "eps=0.0 with method='sat' trains without an attack; allowed: eps > 0 for ard, iad, rslad, sat, sat_awp, trades, "
     "trades_awp (or method=natural)"),
    ({"eps": 0.0}, "eps=0.0 with method='rslad' trains without an attack"),
    ({"sat_attack_mode": "test"}, "sat_attack_mode='test' is not allowed; allowed: train, eval"),
    ({"val_attack": "autoattack"}, "val_attack='autoattack' is not allowed; allowed: pgd, pgd_trades, pgd_sat, fgsm, cw_inf"),
    ({"recipe": "madry"}, "recipe='madry' is not registered; allowed: ard, ard_300, iad"),
    ({"recipe_scale": 0.5}, "recipe_scale=0.5 needs a recipe; allowed: recipe_scale=1.0 without one"),
    ({"recipe": "sat"}, "method='rslad' contradicts recipe='sat', which sets method='sat'; allowed: leave method "
                        "to the recipe, or drop the recipe"),
])
def test_from_dict_rejects_bad_values_naming_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_round_trip_and_coercion():
    cfg = TrainConfig.from_dict({"epochs": 3.0, "alpha": 1, "lr_milestones": [1, 2]})
    assert cfg.epochs == 3 and isinstance(cfg.alpha, float) and cfg.lr_milestones == (1, 2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(seed=3).seed == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_natural_training_may_use_eps_zero():
    assert TrainConfig.from_dict({"method": "natural", "teacher": "none", "eps": 0}).eps == 0.0


def test_new_fields_default_to_the_reference_behaviour():
    cfg = TrainConfig()
    assert (cfg.sat_attack_mode, cfg.val_attack, cfg.recipe, cfg.recipe_scale) == ("train", "pgd", "", 1.0)


def test_methods_without_teacher_accept_none():
    cfg = TrainConfig.from_dict({"method": "trades", "teacher": "none"})
    assert not cfg.uses_teacher
    assert TrainConfig.from_dict({"method": "rslad"}).uses_teacher


def test_teacher_must_match_the_dataset():
    with pytest.raises(ConfigError, match="teacher='wrn34_10_trades' is a cifar10 teacher but dataset='digits'; allowed: digits_cnn"):
        TrainConfig.from_dict({"dataset": "digits"})
