"""Recipes: each paper row's method, schedule and knobs; scaling to short profiles; a label that never lies."""

import pytest

from analysis import paper
from trainables.config import ConfigError, TrainConfig
from trainables.recipes import PAPER_EPOCHS, RECIPES, get_recipe, list_recipes, recipe_overrides

TABLE4 = ("natural", "sat", "sat_300", "trades", "trades_300", "ard", "ard_300", "iad", "iad_300", "rslad")
SMOKE = dict(dataset="digits", student="cnn_small", teacher="digits_cnn_medium_trades", eps=0.1,
             attack_step_size=0.025)


def paper_config(name: str, **changes) -> TrainConfig:
    """The recipe on the paper profile (TrainConfig defaults: 300 epochs, so scale 1)."""
    teacher = {} if get_recipe(name).method in ("ard", "iad", "rslad") else {"teacher": "none"}
    return TrainConfig.from_dict({**teacher, **recipe_overrides(name, PAPER_EPOCHS), **changes})


def test_every_table4_row_has_a_recipe():
    assert set(list_recipes()) == set(TABLE4) | {"rslad_awp_teacher"}  # Table 5's RSLAD*: tests/test_table5.py


@pytest.mark.parametrize("name, method, epochs, milestones", [
    ("natural", "natural", 100, [75, 90]),
    ("sat", "sat", 100, [75, 90]),
    ("trades", "trades", 100, [75, 90]),
    ("ard", "ard", 200, [100, 150]),
    ("iad", "iad", 200, [100, 150]),
    ("sat_300", "sat", 300, [215, 260, 285]),
    ("trades_300", "trades", 300, [215, 260, 285]),
    ("ard_300", "ard", 300, [215, 260, 285]),
    ("iad_300", "iad", 300, [215, 260, 285]),
    ("rslad", "rslad", 300, [215, 260, 285]),
])
def test_paper_profile_runs_the_published_schedules(name, method, epochs, milestones):
    cfg = paper_config(name)
    assert (cfg.method, cfg.epochs, cfg.milestone_epochs(), cfg.lr_gamma) == (method, epochs, milestones, 0.1)
    assert (cfg.recipe, cfg.recipe_scale) == (name, 1.0)


def test_method_knobs_are_the_reference_defaults():
    assert paper_config("sat").sat_attack_mode == "train"
    assert paper_config("trades").trades_beta == 6.0
    ard = paper_config("ard")
    assert (ard.ard_alpha, ard.ard_temperature) == (1.0, 30.0)
    iad = paper_config("iad")
    assert (iad.ard_alpha, iad.iad_beta, iad.iad_warmup_epochs) == (1.0, 0.1, 60)
    assert paper_config("iad_300").iad_warmup_epochs == 60
    rslad = paper_config("rslad")
    # RSLAD's recipe is the TrainConfig default setting, labelled.
    assert rslad.replace(recipe="", recipe_scale=1.0) == TrainConfig()


def test_short_profile_runs_proportional_versions():
    # smoke: 8 base epochs = 8/300 of the paper's time axis
    cfgs = {n: TrainConfig.from_dict({**SMOKE, **({} if get_recipe(n).method in ("ard", "iad", "rslad") else
                                                  {"teacher": "none"}), **recipe_overrides(n, 8)})
            for n in TABLE4}
    assert {n: c.epochs for n, c in cfgs.items()} == {
        "natural": 3, "sat": 3, "trades": 3, "ard": 5, "iad": 5,
        "sat_300": 8, "trades_300": 8, "ard_300": 8, "iad_300": 8, "rslad": 8}
    assert cfgs["sat"].milestone_epochs() == [2, 3] and cfgs["ard"].milestone_epochs() == [2, 4]
    assert cfgs["rslad"].milestone_epochs() == [6, 7, 8]  # the last decay falls after the end, as in smoke
    assert cfgs["iad"].iad_warmup_epochs == 2 and cfgs["iad_300"].iad_warmup_epochs == 2
    assert all(c.recipe_scale == pytest.approx(8 / 300) for c in cfgs.values())


@pytest.mark.parametrize("changes, key", [
    ({"epochs": 300}, "epochs"),
    ({"lr_milestones": [215, 260, 285], "lr_milestones_ref": 300}, "lr_milestones"),
    ({"trades_beta": 1.0}, "trades_beta"),
    ({"method": "sat"}, "method"),
    ({"recipe_scale": 0.5}, "epochs"),
])
def test_a_config_contradicting_its_recipe_is_refused_naming_the_key(changes, key):
    with pytest.raises(ConfigError) as err:
        paper_config("trades", **changes)
    assert str(err.value).startswith(f"{key}=") and "contradicts recipe='trades'" in str(err.value)


def test_every_recipe_names_its_paper_row_with_the_same_method_and_epochs():
    for name in TABLE4:
        recipe = get_recipe(name)
        rows = [r for r in paper.ROWS if r.label == recipe.row]
        assert len(rows) == 1, name
        assert (rows[0].setting["method"], rows[0].setting["epochs"]) == (recipe.method, recipe.epochs)
        assert recipe.source
        # a trial following the recipe at the paper's scale matches exactly its row
        assert paper.match_rows({**rows[0].setting, "teacher_arch": rows[0].setting.get("teacher_arch"),
                                 "recipe": name})[:1] == rows


def test_registry_refuses_a_duplicate():
    with pytest.raises(ValueError, match="recipe 'sat' is already registered"):
        RECIPES.add("sat", get_recipe("sat"))
