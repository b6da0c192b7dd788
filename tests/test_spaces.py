"""Search spaces: every shipped space composes and validates; define-by-run fits TrainConfig; errors name file and key."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest

from spaces import SPACES_DIR, Space, SpaceError, list_spaces, load_space
from trainables.config import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = ("alpha", "epochs", "teacher", "rsl_source", "method", "joint")
PROFILES = ("paper", "smoke")
PAPER_BASE: dict = {}  # TrainConfig defaults are the paper setting
SMOKE_BASE = {
    "dataset": "digits", "student": "cnn_small", "teacher": "digits_cnn_medium_trades", "epochs": 6,
    "eps": 0.1, "attack_step_size": 0.025, "batch_size": 64, "val_size": 300,
    "lr_milestones": [4, 5], "lr_milestones_ref": 6, "device": "cpu",
}
BASES = {"paper": PAPER_BASE, "smoke": SMOKE_BASE}
CIFAR_TEACHERS = {"resnet18_trades", "resnet34_trades", "resnet50_trades", "wrn34_10_trades",
                  "wrn34_20_gowal", "wrn70_16_gowal", "wrn34_10_sat_awp", "wrn34_10_trades_awp"}
DIGITS_TEACHERS = {"digits_cnn_small_trades", "digits_cnn_medium_trades", "digits_cnn_large_trades",
                   "digits_cnn_medium_sat", "digits_cnn_medium_sat_awp", "digits_cnn_medium_trades_awp"}


def sample(space: Space, n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """(optuna params, returned train dict) for n define-by-run calls on real trials."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        train = space.define_by_run(trial)
        out.append((dict(trial.params), train))
        study.tell(trial, 0.0)
    return out


def write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text))


def unprefix(train: dict) -> dict:
    assert all(k.startswith("train/") for k in train), train
    return {k.removeprefix("train/"): v for k, v in train.items()}


# --- the shipped spaces -------------------------------------------------------------------------
def test_every_shipped_space_is_listed():
    assert set(SHIPPED) <= set(list_spaces())
    assert all((SPACES_DIR / f"{name}.yaml").is_file() for name in list_spaces())


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_validates_and_every_trial_is_a_valid_config(name: str, profile: str):
    space = load_space(name, profile, base=BASES[profile])
    assert (space.name, space.profile, space.metric, space.mode) == (name, profile, "val_pgd_acc", "max")
    assert space.description and space.source == SPACES_DIR / f"{name}.yaml"
    # The method space is a table of paper rows: every recipe runs to the end.
    assert space.budget["scheduler"] == ("none" if name == "method" else "asha")
    assert space.budget["asha"]["time_attr"] == "schedule_pct"
    if profile == "smoke":
        assert 6 <= space.budget["num_samples"] <= (10 if name == "method" else 8)
        assert space.budget["max_concurrent"] == 2
        if name != "method":
            assert (space.budget["asha"]["grace_period"], space.budget["asha"]["reduction_factor"]) == (25, 2)
    teachers = DIGITS_TEACHERS if profile == "smoke" else CIFAR_TEACHERS
    for params, train in sample(space, 40):
        values = unprefix(train)
        assert set(params) <= {p.name for p in space.params}
        for key, value in space.fixed.items():
            assert values[key] == value
        cfg = TrainConfig.from_dict({**BASES[profile], **values})
        assert cfg.teacher in teachers
        assert all(isinstance(v, (str, int, float, bool, list)) for v in train.values())
    for point in space.points_to_evaluate:
        space.train_config(point)


def test_smoke_profile_only_swaps_teachers_and_budget():
    for name in SHIPPED:
        paper, smoke = load_space(name, "paper", base=PAPER_BASE), load_space(name, "smoke", base=SMOKE_BASE)
        assert paper.fixed == smoke.fixed and [p.name for p in paper.params] == [p.name for p in smoke.params]
        for p in smoke.params:
            if p.target == "teacher":
                assert set(p.values) <= DIGITS_TEACHERS
    assert load_space("epochs", "smoke", base=SMOKE_BASE).params[0].values == [3, 6, 9]


def test_alpha_space_maps_k_to_alpha_and_covers_the_log_range():
    space = load_space("alpha", base=PAPER_BASE)
    assert space.points_to_evaluate == [{"alpha_ratio": 5.0}, {"alpha_ratio": 1.0}]
    assert abs(space.train_overrides({"alpha_ratio": 5.0})["train/alpha"] - 5 / 6) < 1e-12
    assert space.train_overrides({"alpha_ratio": 1.0}) == {"train/method": "rslad", "train/alpha": 0.5}
    ks = [params["alpha_ratio"] for params, _ in sample(space, 200)]
    assert all(0.1 <= k <= 10.0 for k in ks)
    assert min(ks) < 0.2 and max(ks) > 5.0  # log-uniform: both decades are visited
    assert sum(k < 1 for k in ks) / len(ks) == pytest.approx(0.5, abs=0.1)
    for params, train in sample(space, 20, seed=1):
        k = params["alpha_ratio"]
        assert train["train/alpha"] == pytest.approx(k / (1 + k), rel=1e-12)


def test_warm_starts_are_enqueued_in_param_units():
    space = load_space("alpha", base=PAPER_BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    first = space.define_by_run(study.ask())
    assert abs(first["train/alpha"] - 5 / 6) < 1e-12


RECIPES = ("natural", "sat", "sat_300", "trades", "trades_300", "ard", "ard_300", "iad", "iad_300", "rslad")
DISTILL = ("ard", "ard_300", "iad", "iad_300", "rslad")


@pytest.mark.parametrize("profile", PROFILES)
def test_method_space_runs_every_recipe_with_a_teacher_only_for_distillation(profile: str):
    space = load_space("method", profile, base=BASES[profile])
    seen = set()
    for params, train in sample(space, 120):
        recipe = params["recipe"]
        seen.add(recipe)
        values = unprefix(train)
        assert values["recipe"] == recipe and values["method"] == recipe.removesuffix("_300")
        if recipe in DISTILL:
            assert "teacher" in params and values["teacher"] == params["teacher"]
        else:
            assert "teacher" not in params and "teacher" not in values
        TrainConfig.from_dict({**BASES[profile], **values})  # the label agrees with the fields
    assert seen == set(RECIPES)
    assert [p["recipe"] for p in space.points_to_evaluate] == ["rslad", *[r for r in RECIPES if r != "rslad"]]
    assert space.budget["num_samples"] == len(RECIPES)


def test_method_space_paper_profile_trains_the_published_schedules():
    space = load_space("method", "paper", base=PAPER_BASE)
    got = {r: space.train_config({"recipe": r}) for r in RECIPES}
    assert {r: (c.epochs, c.milestone_epochs()) for r, c in got.items()} == {
        "natural": (100, [75, 90]), "sat": (100, [75, 90]), "trades": (100, [75, 90]),
        "ard": (200, [100, 150]), "iad": (200, [100, 150]),
        **{r: (300, [215, 260, 285]) for r in ("sat_300", "trades_300", "ard_300", "iad_300", "rslad")}}
    assert got["rslad"].alpha == pytest.approx(5 / 6) and got["rslad"].rsl_source == "nat-nat-nat"
    assert got["iad"].iad_warmup_epochs == 60 and got["sat"].sat_attack_mode == "train"


def test_method_space_smoke_profile_scales_every_schedule_to_the_base():
    space = load_space("method", "smoke", base=SMOKE_BASE)  # 6 base epochs
    got = {r: space.train_config({"recipe": r}) for r in RECIPES}
    assert {r: c.epochs for r, c in got.items()} == {
        "natural": 2, "sat": 2, "trades": 2, "ard": 4, "iad": 4,
        "sat_300": 6, "trades_300": 6, "ard_300": 6, "iad_300": 6, "rslad": 6}
    assert all(c.recipe_scale == pytest.approx(6 / 300) for c in got.values())


def test_a_space_that_contradicts_its_recipe_is_refused(tmp_path: Path):
    write(tmp_path, "bad", """
        params:
          recipe: {type: choice, values: [sat, trades]}
          trades_beta: {type: uniform, low: 1.0, high: 10.0, when: {recipe: trades}}
        """)
    with pytest.raises(SpaceError) as err:
        load_space("bad", spaces_dir=tmp_path, base=PAPER_BASE)
    assert "trades_beta=1.0 contradicts recipe='trades', which sets trades_beta=6.0" in str(err.value)
    write(tmp_path, "bad2", """
        params:
          recipe: {type: choice, values: [sat, sat_9000]}
        """)
    with pytest.raises(SpaceError, match=r"params.recipe.values\[1\]='sat_9000': recipe='sat_9000' is not registered"):
        load_space("bad2", spaces_dir=tmp_path, base=PAPER_BASE)


def test_a_fixed_recipe_expands_and_feeds_when_conditions(tmp_path: Path):
    write(tmp_path, "fixedrecipe", """
        params:
          teacher: {type: choice, values: [wrn34_10_trades, resnet18_trades], when: {method: ard}}
        fixed: {recipe: ard}
        """)
    space = load_space("fixedrecipe", spaces_dir=tmp_path, base=PAPER_BASE)
    cfg = space.train_config({"teacher": "resnet18_trades"})
    assert (cfg.recipe, cfg.method, cfg.epochs, cfg.teacher) == ("ard", "ard", 200, "resnet18_trades")


def test_epochs_space_says_asha_is_fair_across_schedules():
    space = load_space("epochs", base=PAPER_BASE)
    assert "schedule_pct" in space.description
    assert {unprefix(t)["epochs"] for _, t in sample(space, 30)} == {100, 200, 300}


def test_define_by_run_pickles():
    space = load_space("method", "smoke", base=SMOKE_BASE)
    fn = pickle.loads(pickle.dumps(space.define_by_run))
    restored = pickle.loads(pickle.dumps(space))
    assert restored.base == SMOKE_BASE
    assert [t for _, t in sample(restored, 10)] == [t for _, t in sample(space, 10)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    TrainConfig.from_dict({**SMOKE_BASE, **unprefix(fn(trial))})


def test_when_on_a_field_reads_fixed_then_base(tmp_path: Path):
    (tmp_path / "cond.yaml").write_text(textwrap.dedent("""
        params:
          trades_beta: {type: uniform, low: 1.0, high: 10.0, when: {method: trades}}
          epochs: {type: int, low: 2, high: 8, step: 2}
    """))
    space = load_space("cond", spaces_dir=tmp_path, base={"method": "trades"})
    assert "train/trades_beta" in space.define_by_run(optuna.create_study().ask())
    # With the default method (rslad) trades_beta would never be suggested: a dead param is an error.
    with pytest.raises(SpaceError, match=r"cond\.yaml: params\.trades_beta\.when=.* can never hold"):
        load_space("cond", spaces_dir=tmp_path, base={})
    (tmp_path / "cond.yaml").write_text((tmp_path / "cond.yaml").read_text() + "fixed: {method: trades}\n")
    space = load_space("cond", spaces_dir=tmp_path, base={"method": "sat"})  # fixed beats base
    assert space.define_by_run(optuna.create_study().ask())["train/method"] == "trades"


# --- errors name file and key -------------------------------------------------------------------
GOOD_PARAMS = """
params:
  alpha_ratio: {type: loguniform, low: 0.1, high: 10.0, target: alpha, transform: ratio_to_fraction}
fixed: {method: rslad}
"""


@pytest.mark.parametrize("text, message", [
    ("params:\n  alpha_ratio: {type: loguniform, low: 0.1, high: 10.0, target: alpah}\n",
     "params.alpha_ratio.target='alpah' is not a TrainConfig field; allowed: dataset, data_dir"),
    ("params:\n  alpha_ratio: {type: lognormal, low: 0.1, high: 10.0}\n",
     "params.alpha_ratio.type='lognormal' is not a param type; allowed: choice, uniform, loguniform"),
    ("params:\n  alpha: {type: uniform, low: 0.9, high: 0.1}\n",
     "params.alpha: low=0.9 must be < high=0.1"),
    ("params:\n  alpha: {type: uniform, low: 0.5, high: 0.5}\n",
     "params.alpha: low=0.5 must be < high=0.5"),
    ("params:\n  alpha: {type: uniform, high: 0.5}\n", "params.alpha.low missing; required for type uniform"),
    ("params:\n  teacher: {type: choice}\n", "params.teacher.values missing or empty"),
    ("params:\n  alpha: {type: loguniform, low: 0.0, high: 0.5}\n",
     "params.alpha.low=0.0 must be > 0 for type loguniform"),
    ("params:\n  alpha: {type: uniform, low: 0.1, high: 0.5, transform: sigmoid}\n",
     "params.alpha.transform='sigmoid' is not a transform; allowed: ratio_to_fraction"),
    ("params:\n  alpha: {type: uniform, low: 0.1, high: 0.5, lo: 1}\n",
     "unknown key params.alpha.'lo'; allowed: type, target, transform, when, low, high"),
    ("params:\n  teacher: {type: choice, values: [a], when: {methd: rslad}}\n",
     "params.teacher.when.methd is neither an earlier param nor a TrainConfig field"),
    ("params:\n  teacher: {type: choice, values: [a], when: {method: rslad}}\n  method: {type: choice, values: [rslad]}\n",
     "params.teacher.when.method refers to params.method, which is not earlier"),
    ("params:\n  m: {type: choice, values: [rslad], target: method}\n  teacher: {type: choice, values: [a], when: {method: rslad}}\n",
     "params.teacher.when.method: the field is searched by params.m; name the param"),
    ("params:\n  m: {type: choice, values: [rslad, ard], target: method}\n  teacher: {type: choice, values: [a], when: {m: sat}}\n",
     "params.teacher.when.m='sat' is outside params.m's domain; allowed: rslad, ard"),
    ("params:\n  alpha: {type: uniform, low: 0.1, high: 0.5}\nfixed: {alpah: 0.5}\n",
     "fixed.alpah is not a TrainConfig field; allowed: dataset"),
    ("params:\n  alpha: {type: uniform, low: 0.1, high: 0.5}\nfixed: {alpha: 0.5}\n",
     "params.alpha.target='alpha' is also in fixed"),
    (GOOD_PARAMS + "paramz: {}\n",
     "unknown key 'paramz'; allowed: description, metric, mode, params, fixed, points_to_evaluate, budget, profiles"),
    (GOOD_PARAMS + "points_to_evaluate:\n  - {alpha_ratio: 50.0}\n",
     "points_to_evaluate[0].alpha_ratio=50.0 is outside the domain; allowed: 0.1 <= value <= 10.0"),
    (GOOD_PARAMS + "points_to_evaluate:\n  - {alpha: 0.5}\n",
     "points_to_evaluate[0].alpha is not a param of this space; allowed: alpha_ratio"),
    (GOOD_PARAMS + "budget: {num_sample: 4}\n",
     "unknown key budget.'num_sample'; allowed: num_samples, max_concurrent, scheduler, asha"),
    (GOOD_PARAMS + "budget: {asha: {grace: 1}}\n", "unknown key budget.asha.'grace'; allowed: time_attr"),
    (GOOD_PARAMS + "budget: {scheduler: hyperband}\n", "budget.scheduler='hyperband'; allowed: asha, none"),
    (GOOD_PARAMS + "mode: maximise\n", "mode='maximise'; allowed: max, min"),
    (GOOD_PARAMS + "params:\n  x: {type: uniform, low: 0, high: 1}\n", "duplicate key 'params'"),
    ("params:\n  train: {type: uniform, low: 0.1, high: 0.5, target: alpha}\n", "params.train: a param name"),
    ("params:\n  e: {type: int, low: 1.5, high: 9, target: epochs}\n", "params.e.low=1.5 must be an integer"),
    ("params:\n  e: {type: quniform, low: 0.0, high: 1.0, q: 0.3, target: alpha}\n",
     "params.e: high - low = 1.0 is not a multiple of q=0.3"),
    ("params:\n  k: {type: uniform, low: -2.0, high: 1.0, target: alpha, transform: ratio_to_fraction}\n",
     "params.k: value -2.0 is outside transform ratio_to_fraction's domain; allowed: >= 0"),
    (GOOD_PARAMS + "profiles:\n  smoke: {budgett: {}}\n", "unknown key profiles.smoke.'budgett'"),
])
def test_structure_errors_name_file_and_key(tmp_path: Path, text: str, message: str):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space("bad", spaces_dir=tmp_path, base=PAPER_BASE)
    text = str(err.value)
    assert text.startswith(str(tmp_path / "bad.yaml") + ": "), text
    assert message in text, text
    assert "\n" not in text


@pytest.mark.parametrize("text, message", [
    ("params:\n  teacher: {type: choice, values: [wrn34_10_trades, wrn99_trades]}\n",
     "params.teacher.values[1]='wrn99_trades': teacher='wrn99_trades' is not registered; allowed: "),
    ("params:\n  alpha: {type: uniform, low: 0.5, high: 1.5}\n",
     "params.alpha.high=1.5: alpha=1.5 out of range; allowed: <= 1.0"),
    ("params:\n  epochs: {type: int, low: 0, high: 5}\n",
     "params.epochs.low=0: epochs=0 out of range; allowed: >= 1"),
    ("params:\n  rsl_source: {type: choice, values: [nat-nat-nat, adv-nat-nat]}\n",
     "params.rsl_source.values[1]='adv-nat-nat': rsl_source='adv-nat-nat' is not allowed"),
    ("params:\n  method: {type: choice, values: [rslad, ard]}\n  teacher: {type: choice, values: [wrn34_10_trades, bogus], when: {method: ard}}\n",
     "params.teacher.values[1]='bogus': teacher='bogus' is not registered"),
    ("params:\n  epochs: {type: choice, values: [3]}\nfixed: {kl_scale: 0.0}\n",
     "fixed: kl_scale=0.0 out of range"),
    ("params:\n  m: {type: choice, values: [rslad, natural], target: method}\n"
     "  k: {type: uniform, low: 1.0, high: 5.0, target: alpha, transform: ratio_to_fraction, when: {m: rslad}}\n"
     "points_to_evaluate:\n  - {m: natural, k: 5.0}\n",
     "points_to_evaluate[0].k is never used"),
])
def test_validate_errors_name_file_and_key(tmp_path: Path, text: str, message: str):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space("bad", spaces_dir=tmp_path, base=PAPER_BASE)
    assert str(err.value).startswith(f"{tmp_path / 'bad.yaml'}: "), str(err.value)
    assert message in str(err.value), str(err.value)


def test_smoke_profile_catches_a_cifar_teacher_left_in_warm_starts(tmp_path: Path):
    (tmp_path / "t.yaml").write_text(textwrap.dedent("""
        params:
          teacher: {type: choice, values: [wrn34_10_trades]}
        points_to_evaluate: [{teacher: wrn34_10_trades}]
        profiles:
          smoke:
            params: {teacher: {values: [digits_cnn_small_trades]}}
    """))
    with pytest.raises(SpaceError, match=r"t\.yaml \(profile smoke\): points_to_evaluate\[0\]\.teacher='wrn34_10_trades'"):
        load_space("t", "smoke", spaces_dir=tmp_path, base=SMOKE_BASE)
    with pytest.raises(SpaceError, match=r"profile='nightly' not defined; available: paper, smoke"):
        load_space("t", "nightly", spaces_dir=tmp_path, base=SMOKE_BASE)


def test_shipped_file_is_named_relative_to_the_repo():
    with pytest.raises(SpaceError, match=r"^spaces/alpha\.yaml: fixed: kl_scale=-1\.0 out of range"):
        load_space("alpha", base={**PAPER_BASE, "kl_scale": -1.0})


def test_unknown_space_lists_the_available_ones():
    with pytest.raises(SpaceError) as err:
        load_space("alpah", base=PAPER_BASE)
    assert str(err.value).startswith("space='alpah' not found; available: alpha, epochs, joint, method")
    assert isinstance(err.value, ValueError)


def test_field_values_include_what_recipes_set():
    space = load_space("method", "paper", base=PAPER_BASE)
    assert space.field_values("method") == {"natural", "sat", "trades", "ard", "iad", "rslad"}
    assert space.field_values("epochs") == {100, 200, 300}
    assert space.field_values("teacher") == {"wrn34_10_trades"}
    assert space.field_values("dataset") == {"cifar10"}
    alpha = load_space("alpha", "smoke", base=SMOKE_BASE)
    assert alpha.field_values("method") == {"rslad"} and alpha.field_values("epochs") == {6}
