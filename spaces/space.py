"""The compiled Space: what a trial's config is for given param values, recipes expanded.

Recipes: a param or fixed value whose target is ``recipe`` (a name from ``trainables.recipes``)
expands into that paper row's TrainConfig fields (method, epochs, lr schedule, knobs), scaled by
base epochs / 300, plus ``recipe`` and ``recipe_scale``; fields the space sets itself stay as set
(a contradiction is a TrainConfig error, so validate() refuses the space).

The define-by-run function returns the TrainConfig values as ``{"train/<field>": value}``: Ray's
OptunaSearch merges them with Optuna's own (bare-named) params and unflattens the "/" keys, so a
trial's config is ``{"alpha_ratio": 5.0, "train": {"alpha": 0.833, ...}}`` deep-merged with the
Tuner's param_space; the trainable reads only ``config["train"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from spaces.errors import SpaceError, display_name, fmt_list
from spaces.params import Param
from trainables.config import TrainConfig
from trainables.recipes import RECIPES, recipe_overrides

if TYPE_CHECKING:  # optuna is only needed by whoever passes a trial in
    import optuna

TRAIN_PREFIX = "train/"
RECIPE_FIELD = "recipe"
_MISSING = object()


@dataclass
class Space:
    """A compiled search space: Optuna params, fixed overrides, warm starts and budget of one profile."""

    name: str
    profile: str
    description: str
    metric: str
    mode: str
    params: list[Param]
    fixed: dict[str, Any]
    points_to_evaluate: list[dict[str, Any]]
    budget: dict[str, Any]
    source: Path
    base: dict[str, Any]
    """The base train config (profile and command line) the space was checked against; `when` on a field the space
    does not set reads it."""

    # -- trial-time API ----------------------------------------------------------------------
    def define_by_run(self, trial: "optuna.Trial") -> dict[str, Any]:
        """Suggest every active param on the trial; return the TrainConfig values as {"train/<field>": value}."""
        return self._overrides(lambda p: p.suggest(trial))

    def train_overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The define-by-run mapping for given param values (missing or inactive params are left out)."""
        unknown = sorted(set(params) - {p.name for p in self.params})
        if unknown:
            raise SpaceError(
                f"{display_name(self.source, self.profile)}: {unknown[0]!r} is not a param of this space; "
                f"allowed: {fmt_list(p.name for p in self.params)}"
            )
        return self._overrides(lambda p: params.get(p.name, _MISSING))

    def train_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The validated TrainConfig of base + fixed + these param values."""
        overrides = self.train_overrides(params)
        values = {**self.base, **{k[len(TRAIN_PREFIX):]: v for k, v in overrides.items()}}
        return TrainConfig.from_dict(values)

    def active_params(self, params: Mapping[str, Any]) -> list[str]:
        """Names of the given params that a trial with these values suggests (their `when` holds), in order."""
        chosen, _ = self._walk(lambda p: params.get(p.name, _MISSING))
        return list(chosen)

    def _overrides(self, value_of: Callable[[Param], Any]) -> dict[str, Any]:
        _, train = self._walk(value_of)
        return {TRAIN_PREFIX + k: v for k, v in train.items()}

    def _walk(self, value_of: Callable[[Param], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The active params' values (value_of asked in order, _MISSING skips one) and the TrainConfig fields set."""
        chosen: dict[str, Any] = {}
        train = self._with_recipe(dict(self.fixed))
        for p in self.params:
            if not self._active(p, chosen, train):
                continue
            value = value_of(p)
            if value is _MISSING:
                continue
            chosen[p.name] = value
            train[p.target] = p.to_train(value)
            if p.target == RECIPE_FIELD:
                train = self._with_recipe(train)
        return chosen, train

    def _with_recipe(self, train: dict[str, Any]) -> dict[str, Any]:
        """train plus the fields of its recipe (scaled to the base schedule) that it does not set itself.

        A field the space sets itself stays as set: when it contradicts the recipe, building the
        TrainConfig fails naming the field, so validate() refuses the space.
        """
        name = train.get(RECIPE_FIELD)
        if not name or name not in RECIPES:
            return train  # no recipe, or an unknown one: TrainConfig names it when the config is built
        epochs = self.base.get("epochs", TrainConfig.epochs)
        for key, value in recipe_overrides(name, epochs).items():
            train.setdefault(key, list(value) if isinstance(value, tuple) else value)
        return train

    def _active(self, p: Param, chosen: Mapping[str, Any], train: Mapping[str, Any]) -> bool:
        """Whether p's `when` holds given the params chosen so far and the fields set so far."""
        for key, allowed in p.when.items():
            if key in self._param_names():
                if key not in chosen:  # the referenced param was itself inactive (or not given)
                    return False
                current = chosen[key]
            elif key in train:
                current = train[key]
            else:
                current = self._base_value(key)
            if current not in allowed:
                return False
        return True

    def _base_value(self, key: str) -> Any:
        """TrainConfig field `key` in the base config recorded by validate(), else the dataclass default."""
        return self.base[key] if key in self.base else getattr(TrainConfig, key)

    def unsearched_value(self, key: str) -> Any:
        """TrainConfig field `key` where no param sets it: fixed (a fixed recipe's included), else the base's."""
        fixed = self._with_recipe(dict(self.fixed))
        return fixed[key] if key in fixed else self._base_value(key)

    def field_values(self, key: str) -> set[Any]:
        """Every value TrainConfig field `key` can take in a trial (lists as tuples): its fixed value (a fixed
        recipe's included) or the base's, the choices of a param that targets it, and what each recipe choice sets.

        Range params that target `key` are not enumerated; the driver asks this for names (method,
        teacher, dataset, data_dir, ...), which are choices. Call validate() first: it records the base.
        """
        fixed = self._with_recipe(dict(self.fixed))
        values = {self.unsearched_value(key)}
        for p in self.params:
            if p.type != "choice":
                continue
            if p.target == key:
                values |= {p.to_train(v) for v in p.values}
            elif p.target == RECIPE_FIELD and key not in fixed:
                values |= {self._with_recipe({RECIPE_FIELD: v}).get(key, self._base_value(key)) for v in p.values}
        return {tuple(v) if isinstance(v, list) else v for v in values}

    def _param_names(self) -> list[str]:
        return [p.name for p in self.params]
