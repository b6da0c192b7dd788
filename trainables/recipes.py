"""The paper's rows as named recipes: the method, schedule and method knobs of each row of the supplement's Tables 4-5.

A recipe is stated on the paper's time axis, where RSLAD trains for 300 epochs
(`PAPER_EPOCHS`), and runs at `scale` of its published length: epochs (and IAD's warm-up)
are multiplied by it, the learning-rate milestones keep their place in the schedule
(`lr_milestones_ref` is the recipe's own length, so `TrainConfig.milestone_epochs()` rescales
them). The search compiler uses scale = base epochs / 300, so the paper profile (300 epochs)
runs every published schedule as printed and a short profile (smoke: 8 epochs) runs
proportional short versions of all of them.

A recipe fixes only what defines its row: the method, its schedule and its knobs. Data, student,
teacher, learning rate, batch size, eps, attack steps and kl_scale stay the profile's. A
TrainConfig that carries a recipe label must agree with `Recipe.fields(recipe_scale)`, so the
label never lies (`TrainConfig.validate`). Table 5's Natural, SAT, TRADES and RSLAD rows are
Table 4's (the same runs and numbers), so their recipes serve both; its RSLAD* row differs only
in the teacher, trained with SAT + AWP: `Recipe.teacher_method` names that, and the trial's
teacher (e.g. wrn34_10_sat_awp, or digits_cnn_medium_sat_awp on the smoke profile) supplies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from trainables.registry import Registry

PAPER_EPOCHS = 300
"""RSLAD's schedule length: the time axis every recipe is stated on."""
RSLAD_MILESTONES = (215, 260, 285)
"""RSLAD's lr decays (x0.1) in its 300-epoch schedule; the "-300" rows of Table 4 use them too."""
LR_GAMMA = 0.1
EPOCH_KNOBS = ("iad_warmup_epochs",)
"""Knobs counted in epochs: they scale with the schedule."""


@dataclass(frozen=True)
class Recipe:
    """One published row: method, schedule (epochs, lr x0.1 at milestones) and method knobs, with its source."""

    name: str
    method: str
    epochs: int
    """Published number of epochs."""
    lr_milestones: tuple[int, ...]
    """Epochs (of the published schedule) where lr is multiplied by 0.1."""
    row: str
    """The supplement's row this recipe reproduces (analysis.paper.ROWS label)."""
    source: str
    """Where the schedule and knobs come from."""
    knobs: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig method knobs of the row (trades_beta, ard_alpha, ...)."""
    teacher_method: str = ""
    """How the row's teacher was trained (teachers.TeacherSpec.method) when the row is defined by it; empty: the
    paper's TRADES teachers or none. Not a TrainConfig field: the teacher stays the profile's or the space's."""

    def fields(self, scale: float = 1.0) -> dict[str, Any]:
        """The TrainConfig values of this recipe at `scale` of its published length (the recipe label excluded)."""
        if not scale > 0:
            raise ValueError(f"recipe {self.name!r}: scale={scale} must be > 0")
        values: dict[str, Any] = {"method": self.method, "epochs": max(1, round(self.epochs * scale)),
                                  "lr_milestones": tuple(self.lr_milestones), "lr_milestones_ref": self.epochs,
                                  "lr_gamma": LR_GAMMA}
        for key, value in self.knobs.items():
            values[key] = max(0, round(value * scale)) if key in EPOCH_KNOBS else value
        return values


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(recipe: Recipe) -> Recipe:
    """Add a recipe; a duplicate name raises ValueError."""
    RECIPES.add(recipe.name, recipe)
    return recipe


def list_recipes() -> list[str]:
    """Sorted names of every recipe."""
    return RECIPES.names()


def get_recipe(name: str) -> Recipe:
    """The recipe `name`; raises UnknownNameError listing the known ones."""
    return RECIPES.get(name)


def recipe_scale(base_epochs: int) -> float:
    """The scale a base schedule of `base_epochs` epochs gives every recipe (1.0 for the paper's 300)."""
    return base_epochs / PAPER_EPOCHS


def recipe_overrides(name: str, base_epochs: int) -> dict[str, Any]:
    """TrainConfig overrides of recipe `name` for a base schedule of `base_epochs`: its fields, the label and the scale."""
    scale = recipe_scale(base_epochs)
    return {**get_recipe(name).fields(scale), "recipe": name, "recipe_scale": scale}


_SHORT = (75, 90)  # SAT and TRADES: 100 epochs, lr /10 at 75 and 90
_DISTILL = (100, 150)  # ARD and IAD: 200 epochs, lr /10 at 100 and 150
_SAT = {"sat_attack_mode": "train"}
_TRADES = {"trades_beta": 6.0}
_ARD = {"ard_alpha": 1.0, "ard_temperature": 30.0}
_IAD = {"ard_alpha": 1.0, "iad_beta": 0.1, "iad_warmup_epochs": 60}
_RSLAD = {"alpha": 5 / 6, "rsl_source": "nat-nat-nat"}
_T4 = "RSLAD supplement Table 4"
_AS_300 = "RSLAD's schedule (300 epochs, lr /10 at 215, 260, 285)"
for _recipe in (
    Recipe("natural", "natural", 100, _SHORT, "Natural",
           f"{_T4} (100 epochs); the supplement gives no lr schedule for this row: SAT's is used"),
    Recipe("sat", "sat", 100, _SHORT, "SAT",
           f"{_T4}: 100 epochs, lr /10 at 75 and 90; x' as Madry's cifar10_challenge "
           "(PGD on CE, uniform start, student in train mode)", _SAT),
    Recipe("sat_300", "sat", PAPER_EPOCHS, RSLAD_MILESTONES, "SAT-300", f"{_T4}: SAT with {_AS_300}", _SAT),
    Recipe("trades", "trades", 100, _SHORT, "TRADES",
           f"{_T4}: 100 epochs, lr /10 at 75 and 90; beta = 6 as the TRADES reference", _TRADES),
    Recipe("trades_300", "trades", PAPER_EPOCHS, RSLAD_MILESTONES, "TRADES-300", f"{_T4}: TRADES with {_AS_300}",
           _TRADES),
    Recipe("ard", "ard", 200, _DISTILL, "ARD",
           f"{_T4}: 200 epochs, lr /10 at 100 and 150 (the ARD code's second decay never fires; the paper's "
           "schedule is used); alpha 1, t 30 as the ARD reference", _ARD),
    Recipe("ard_300", "ard", PAPER_EPOCHS, RSLAD_MILESTONES, "ARD-300", f"{_T4}: ARD with {_AS_300}", _ARD),
    Recipe("iad", "iad", 200, _DISTILL, "IAD",
           f"{_T4}: 200 epochs, lr /10 at 100 and 150; IAD-I defaults: alpha 1, beta 0.1, warm-up 60 epochs, t 1",
           _IAD),
    Recipe("iad_300", "iad", PAPER_EPOCHS, RSLAD_MILESTONES, "IAD-300",
           f"{_T4}: IAD-I with {_AS_300}, warm-up 60 epochs", _IAD),
    Recipe("rslad", "rslad", PAPER_EPOCHS, RSLAD_MILESTONES, "RSLAD, teacher WRN-34-10 (the paper's setting)",
           "RSLAD supplement Tables 2-5 and resnet18_rslad_cifar10.py: 300 epochs, lr /10 at 215, 260, 285, "
           "alpha 5/6, all soft labels T(x)", _RSLAD),
    Recipe("rslad_awp_teacher", "rslad", PAPER_EPOCHS, RSLAD_MILESTONES, "RSLAD* (SAT+AWP teacher)",
           "RSLAD supplement Table 5 and section E: RSLAD as in Tables 2-4 (300 epochs, lr /10 at 215, 260, 285, "
           "alpha 5/6, all soft labels T(x)) from a WRN-34-10 teacher trained with SAT + AWP (AA 54 %); "
           "run it with teacher=wrn34_10_sat_awp", _RSLAD, teacher_method="sat_awp"),
):
    register_recipe(_recipe)
del _recipe
