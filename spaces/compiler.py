"""Compile a search-space YAML file into an Optuna define-by-run function and checked TrainConfig overrides.

A space is data: ``spaces/<name>.yaml``. The format (every key optional but ``params``)::

    description: one line                 # shown by the driver and logged with the search
    metric: val_pgd_acc                   # what ASHA and Optuna optimise (the trainable reports it each epoch)
    mode: max                             # max | min
    params:                               # searched parameters, in order; the key is the Optuna parameter name
      alpha_ratio:
        type: loguniform                  # choice | uniform | loguniform | quniform | int | logint
        low: 0.1                          # ranges: low < high (loguniform: low > 0; logint: low >= 1)
        high: 10.0
        target: alpha                     # TrainConfig field it sets (default: the param name)
        transform: ratio_to_fraction      # optional, applied to the value before it reaches TrainConfig
      teacher:
        type: choice
        values: [wrn34_10_trades, ...]    # choice: non-empty list of str/int/float/bool
        when: {method: [ard, iad, rslad]} # only suggested when an earlier param (or a fixed/base field) matches
      # quniform also takes q (the grid step); int takes an optional step (default 1)
    fixed: {method: rslad}                # TrainConfig overrides that hold for every trial of this space
    points_to_evaluate:                   # warm starts in param units (Optuna enqueues them); may be partial
      - {alpha_ratio: 5.0}
    budget:                               # defaults shown
      num_samples: 8
      max_concurrent: 2
      scheduler: asha                     # asha | none
      asha: {time_attr: schedule_pct, max_t: 100, grace_period: 25, reduction_factor: 3}
    profiles:                             # per-profile overrides of any key above, deep-merged
      smoke:                              # (mappings merge, lists and scalars replace, null deletes)
        params: {teacher: {values: [digits_cnn_small_trades, ...]}}
        budget: {num_samples: 8, max_concurrent: 2}

``schedule_pct`` is 100 * epoch / epochs of the trial's own schedule: ASHA rungs on it are fair
between trials that train for different numbers of epochs.

Transforms: ``ratio_to_fraction`` maps k >= 0 to k / (1 + k) (alpha searched as the supplement's
ratio k = alpha / (1 - alpha), Fig. 1).

Recipes: a param or fixed value whose target is ``recipe`` (a name from ``trainables.recipes``)
expands into that paper row's TrainConfig fields (method, epochs, lr schedule, knobs), scaled by
base epochs / 300, plus ``recipe`` and ``recipe_scale``; fields the space sets itself stay as set
(a contradiction is a TrainConfig error, so validate() refuses the space).

The define-by-run function returns the TrainConfig values as ``{"train/<field>": value}``: Ray's
OptunaSearch merges them with Optuna's own (bare-named) params and unflattens the "/" keys, so a
trial's config is ``{"alpha_ratio": 5.0, "train": {"alpha": 0.833, ...}}`` deep-merged with the
Tuner's param_space; the trainable reads only ``config["train"]``.

This module imports trainables (config only) and optuna, never ray or hydra.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import yaml

from trainables.config import ConfigError, TrainConfig, config_fields
from trainables.recipes import RECIPES, recipe_overrides

if TYPE_CHECKING:  # optuna is only needed by whoever passes a trial in
    import optuna

SPACES_DIR: Path = Path(__file__).resolve().parent
"""Folder of the shipped space files (this package)."""

DEFAULT_PROFILE = "paper"
TRAIN_PREFIX = "train/"
RECIPE_FIELD = "recipe"

TOP_LEVEL_KEYS = ("description", "metric", "mode", "params", "fixed", "points_to_evaluate", "budget", "profiles")
PARAM_TYPES = ("choice", "uniform", "loguniform", "quniform", "int", "logint")
RANGE_TYPES = PARAM_TYPES[1:]
MODES = ("max", "min")
SCHEDULERS = ("asha", "none")
BUDGET_KEYS = ("num_samples", "max_concurrent", "scheduler", "asha")
ASHA_KEYS = ("time_attr", "max_t", "grace_period", "reduction_factor")
DEFAULT_BUDGET: dict[str, Any] = {
    "num_samples": 8,
    "max_concurrent": 2,
    "scheduler": "asha",
    "asha": {"time_attr": "schedule_pct", "max_t": 100, "grace_period": 25, "reduction_factor": 3},
}
# Names that would collide with the trial config's own top-level keys once Ray unflattens it.
RESERVED_PARAM_NAMES = ("train", "trial")
_COMMON_PARAM_KEYS = ("type", "target", "transform", "when")
_PARAM_KEYS = {
    "choice": ("values",),
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "int": ("low", "high", "step"),
    "logint": ("low", "high"),
}


class SpaceError(ValueError):
    """A space file is missing, malformed or does not fit TrainConfig; the message names file and key."""


# --- transforms -------------------------------------------------------------------------------
def ratio_to_fraction(k: float) -> float:
    """k -> k / (1 + k): the supplement's ratio k = alpha / (1 - alpha) back to alpha."""
    return k / (1.0 + k)


@dataclass(frozen=True)
class Transform:
    """A named value transform with the domain it accepts."""

    fn: Callable[[Any], Any]
    accepts: Callable[[Any], bool]
    domain: str


# Module-level functions only: Params store the transform's name, so Spaces pickle without them.
TRANSFORMS: dict[str, Transform] = {
    "ratio_to_fraction": Transform(ratio_to_fraction, lambda k: k >= 0, ">= 0"),
}


# --- YAML loading -------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads 1e-3 as a float (YAML 1.1 would make it a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                # A silently overwritten key is a typo nobody sees; fail loudly instead.
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _deep_merge(base: Any, override: Any) -> Any:
    """Merge override into base: mappings merge, everything else replaces, None deletes the key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fmt_list(values: Any) -> str:
    return ", ".join(str(v) for v in values)


# --- the compiled space -------------------------------------------------------------------------
@dataclass
class Param:
    """One searched parameter: its Optuna distribution, the TrainConfig field it sets, and when it is active."""

    name: str
    type: str
    target: str
    low: float | int | None = None
    high: float | int | None = None
    values: list[Any] = field(default_factory=list)
    q: float | None = None
    step: int = 1
    transform: str | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    def suggest(self, trial: "optuna.Trial") -> Any:
        """Ask the trial for this parameter's value (only trial.suggest_* calls, as Ray requires)."""
        if self.type == "choice":
            return trial.suggest_categorical(self.name, self.values)
        if self.type == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.type == "loguniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.type == "quniform":
            return trial.suggest_float(self.name, self.low, self.high, step=self.q)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step)
        return trial.suggest_int(self.name, self.low, self.high, log=True)

    def to_train(self, value: Any) -> Any:
        """The TrainConfig value for a param value (transform applied)."""
        return TRANSFORMS[self.transform].fn(value) if self.transform else value

    def contains(self, value: Any) -> bool:
        """Whether value lies in this parameter's domain (grid included)."""
        if self.type == "choice":
            # 1 == True in Python; a YAML `true` must not match a choice of 1 (or the reverse).
            return any(value == v and (type(value) is type(v) or (_is_number(value) and _is_number(v)))
                       for v in self.values)
        if not _is_number(value) or not (self.low <= value <= self.high):
            return False
        if self.type in ("int", "logint"):
            return float(value).is_integer() and (value - self.low) % self.step == 0
        if self.type == "quniform":
            n = (value - self.low) / self.q
            return math.isclose(n, round(n), abs_tol=1e-9)
        return True

    def domain(self) -> str:
        """Human description of the domain for error messages."""
        if self.type == "choice":
            return _fmt_list(self.values)
        extra = f" (step {self.q})" if self.type == "quniform" else f" (step {self.step})" if self.step != 1 else ""
        return f"{self.low} <= value <= {self.high}{extra}"

    def probe_values(self) -> list[Any]:
        """Values validate() builds a TrainConfig from: every choice, or the ends of a range."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]


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
    base: dict[str, Any] = field(default_factory=dict)
    """Base train config recorded by validate(); `when` on a field the space does not set reads it."""

    # -- trial-time API ----------------------------------------------------------------------
    def define_by_run(self, trial: "optuna.Trial") -> dict[str, Any]:
        """Suggest every active param on the trial; return the TrainConfig values as {"train/<field>": value}."""
        return self._overrides(lambda p: p.suggest(trial))

    def train_overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The define-by-run mapping for given param values (missing or inactive params are left out)."""
        unknown = sorted(set(params) - {p.name for p in self.params})
        if unknown:
            raise SpaceError(
                f"{self._where()}: {unknown[0]!r} is not a param of this space; "
                f"allowed: {_fmt_list(p.name for p in self.params)}"
            )
        return self._overrides(lambda p: params.get(p.name, _MISSING))

    def train_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The validated TrainConfig of base + fixed + these param values."""
        overrides = self.train_overrides(params)
        values = {**self.base, **{k[len(TRAIN_PREFIX):]: v for k, v in overrides.items()}}
        return TrainConfig.from_dict(values)

    def _overrides(self, value_of: Callable[[Param], Any]) -> dict[str, Any]:
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
        return {TRAIN_PREFIX + k: v for k, v in train.items()}

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
            elif key in self.base:
                current = self.base[key]
            else:
                current = getattr(TrainConfig, key)  # the dataclass default
            if current not in allowed:
                return False
        return True

    def field_values(self, key: str) -> set[Any]:
        """Every value TrainConfig field `key` can take in a trial (lists as tuples): its fixed value (a fixed
        recipe's included) or the base's, the choices of a param that targets it, and what each recipe choice sets.

        Range params that target `key` are not enumerated; the driver asks this for names (method,
        teacher, dataset, data_dir, ...), which are choices. Call validate() first: it records the base.
        """
        fixed = self._with_recipe(dict(self.fixed))
        values = {fixed[key] if key in fixed else self.base.get(key, getattr(TrainConfig, key))}
        for p in self.params:
            if p.type != "choice":
                continue
            if p.target == key:
                values |= {p.to_train(v) for v in p.values}
            elif p.target == RECIPE_FIELD and key not in fixed:
                values |= {self._with_recipe({RECIPE_FIELD: v}).get(key, self.base.get(key, getattr(TrainConfig, key)))
                           for v in p.values}
        return {tuple(v) if isinstance(v, list) else v for v in values}

    def _param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def _param_names(self) -> list[str]:
        return [p.name for p in self.params]

    # -- pre-flight validation -------------------------------------------------------------------
    def validate(self, base: Mapping[str, Any]) -> None:
        """Build a TrainConfig for every param value (ranges: both ends) and warm start; raise SpaceError on the first bad one."""
        self.base = dict(base)
        where = self._where()
        self._check_config("fixed", {})
        for p in self.params:
            witnesses = self._witnesses(p)
            if not witnesses:
                raise SpaceError(
                    f"{where}: params.{p.name}.when={p.when} can never hold with this base and fixed values"
                )
            for i, value in enumerate(p.probe_values()):
                for witness in witnesses:
                    key = f"params.{p.name}.values[{i}]={value!r}" if p.type == "choice" else (
                        f"params.{p.name}.{'low' if i == 0 else 'high'}={value!r}")
                    self._check_config(key, {**witness, p.name: value}, expect_active=p.name)
        for i, point in enumerate(self.points_to_evaluate):
            unused = [k for k in point if k not in set(self._active_params(point))]
            if unused:
                # Optuna would silently drop the value: the warm start is not the point it claims to be.
                raise SpaceError(
                    f"{where}: points_to_evaluate[{i}].{unused[0]} is never used: "
                    f"params.{unused[0]}.when={self._param(unused[0]).when} does not hold for this point"
                )
            self._check_config(f"points_to_evaluate[{i}]", point)

    def _witnesses(self, p: Param) -> list[dict[str, Any]]:
        """Param-value assignments of earlier params under which p's `when` holds (one per allowed combination)."""
        per_key: list[list[dict[str, Any]]] = []
        by_name = {q.name: q for q in self.params}
        for key, allowed in p.when.items():
            options: list[dict[str, Any]] = []
            if key in by_name:
                for value in allowed:
                    options += [{**w, key: value} for w in self._witnesses(by_name[key])]
            else:
                # A field the space never searches: it holds or not by the fixed values (a fixed recipe's
                # included) or the base alone.
                fixed = self._with_recipe(dict(self.fixed))
                current = fixed.get(key, self.base.get(key, getattr(TrainConfig, key)))
                if current in allowed:
                    options.append({})
            per_key.append(options)
        result: list[dict[str, Any]] = []
        for combo in itertools.product(*per_key):
            merged: dict[str, Any] = {}
            if all(merged.setdefault(k, v) == v for w in combo for k, v in w.items()):
                result.append(merged)
        return [w for w in result if self._assignment_consistent(w)]

    def _assignment_consistent(self, assignment: Mapping[str, Any]) -> bool:
        """Every param in the assignment is actually active under it."""
        active = set(self._active_params(assignment))
        return set(assignment) <= active

    def _active_params(self, assignment: Mapping[str, Any]) -> Iterator[str]:
        chosen: dict[str, Any] = {}
        train = self._with_recipe(dict(self.fixed))
        for p in self.params:
            if self._active(p, chosen, train) and p.name in assignment:
                chosen[p.name] = assignment[p.name]
                train[p.target] = p.to_train(assignment[p.name])
                if p.target == RECIPE_FIELD:
                    train = self._with_recipe(train)
                yield p.name

    def _check_config(self, key: str, params: Mapping[str, Any], expect_active: str | None = None) -> None:
        where = self._where()
        if expect_active is not None and expect_active not in set(self._active_params(params)):
            raise SpaceError(f"{where}: {key} is never suggested: its `when` does not hold")
        try:
            self.train_config(params)
        except ConfigError as err:
            raise SpaceError(f"{where}: {key}: {err}") from None

    def _where(self) -> str:
        return _display(self.source) + (f" (profile {self.profile})" if self.profile != DEFAULT_PROFILE else "")


_MISSING = object()


# --- loading ------------------------------------------------------------------------------------
def _display(path: Path) -> str:
    """How a space file is named in messages: spaces/<file> when shipped, else its full path."""
    return f"spaces/{path.name}" if path.parent == SPACES_DIR else str(path)


def list_spaces(spaces_dir: str | Path | None = None) -> list[str]:
    """Names (YAML stems) of the space files in spaces_dir (default: the shipped ones)."""
    folder = Path(spaces_dir) if spaces_dir is not None else SPACES_DIR
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def load_space(name: str, profile: str = DEFAULT_PROFILE, spaces_dir: str | Path | None = None) -> Space:
    """Read spaces_dir/<name>.yaml, merge the profile's overrides and check its structure (not the base)."""
    folder = Path(spaces_dir).resolve() if spaces_dir is not None else SPACES_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise SpaceError(f"space={name!r} not found; available: {_fmt_list(list_spaces(folder))}")
    where = _display(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise SpaceError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{where}: must be a mapping with keys {_fmt_list(TOP_LEVEL_KEYS)}")
    _check_keys(where, "", doc, TOP_LEVEL_KEYS)
    profiles = doc.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise SpaceError(f"{where}: profiles must be a mapping of profile name to overrides")
    # Every profile's top-level keys are checked whichever is loaded: a typo in one shows up early.
    for pname, override in profiles.items():
        if not isinstance(override or {}, dict):
            raise SpaceError(f"{where}: profiles.{pname} must be a mapping of overrides")
        _check_keys(where, f"profiles.{pname}.", override or {}, [k for k in TOP_LEVEL_KEYS if k != "profiles"])
    available = [DEFAULT_PROFILE] + [p for p in profiles if p != DEFAULT_PROFILE]
    if profile not in available:
        raise SpaceError(f"{where}: profile={profile!r} not defined; available: {_fmt_list(available)}")
    if profile in profiles:
        doc = _deep_merge(doc, profiles[profile] or {})
    if profile != DEFAULT_PROFILE:
        where = f"{where} (profile {profile})"
    return _compile(name, profile, path, where, doc)


def _check_keys(where: str, prefix: str, mapping: Mapping[str, Any], allowed: Any) -> None:
    for key in mapping:
        if key not in allowed:
            raise SpaceError(f"{where}: unknown key {prefix}{key!r}; allowed: {_fmt_list(allowed)}")


def _compile(name: str, profile: str, path: Path, where: str, doc: dict[str, Any]) -> Space:
    fields = config_fields()
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SpaceError(f"{where}: description must be a string")
    metric = doc.get("metric", "val_pgd_acc")
    if not isinstance(metric, str) or not metric:
        raise SpaceError(f"{where}: metric={metric!r} must be a metric name reported by the trainable")
    mode = doc.get("mode", "max")
    if mode not in MODES:
        raise SpaceError(f"{where}: mode={mode!r}; allowed: {_fmt_list(MODES)}")

    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: fixed must be a mapping of TrainConfig field to value")
    for key in fixed:
        if key not in fields:
            raise SpaceError(f"{where}: fixed.{key} is not a TrainConfig field; allowed: {_fmt_list(fields)}")

    raw_params = doc.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(f"{where}: params must be a non-empty mapping of param name to its definition")
    params: list[Param] = []
    for pname, spec in raw_params.items():
        params.append(_compile_param(where, str(pname), spec, params, fixed, fields))
    for i, param in enumerate(params):
        for key in param.when:
            later = [q.name for q in params[i:] if key in (q.name, q.target)]
            if later:
                # Params are suggested in order: a `when` on a later one could never see its value.
                raise SpaceError(
                    f"{where}: params.{param.name}.when.{key} refers to params.{later[0]}, which is not "
                    f"earlier; a `when` can only look at earlier params or fields the space does not search"
                )

    points = doc.get("points_to_evaluate") or []
    if not isinstance(points, list):
        raise SpaceError(f"{where}: points_to_evaluate must be a list of mappings param -> value")
    by_name = {p.name: p for p in params}
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise SpaceError(f"{where}: points_to_evaluate[{i}] must be a mapping param -> value")
        for key, value in point.items():
            if key not in by_name:
                raise SpaceError(
                    f"{where}: points_to_evaluate[{i}].{key} is not a param of this space; "
                    f"allowed: {_fmt_list(by_name)}"
                )
            if not by_name[key].contains(value):
                raise SpaceError(
                    f"{where}: points_to_evaluate[{i}].{key}={value!r} is outside the domain; "
                    f"allowed: {by_name[key].domain()}"
                )

    budget = _compile_budget(where, doc.get("budget") or {})
    return Space(
        name=name,
        profile=profile,
        description=description,
        metric=metric,
        mode=mode,
        params=params,
        fixed=dict(fixed),
        points_to_evaluate=[dict(p) for p in points],
        budget=budget,
        source=path,
    )


def _compile_param(
    where: str, name: str, spec: Any, earlier: list[Param], fixed: Mapping[str, Any], fields: list[str]
) -> Param:
    at = f"params.{name}"
    if "/" in name or "." in name or not name.isidentifier() or name in RESERVED_PARAM_NAMES:
        raise SpaceError(
            f"{where}: {at}: a param name must be an identifier other than {_fmt_list(RESERVED_PARAM_NAMES)}"
            " (Ray nests '/' keys and the trial config uses those names)"
        )
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {at} must be a mapping with a type; allowed types: {_fmt_list(PARAM_TYPES)}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise SpaceError(f"{where}: {at}.type={ptype!r} is not a param type; allowed: {_fmt_list(PARAM_TYPES)}")
    allowed_keys = _COMMON_PARAM_KEYS + _PARAM_KEYS[ptype]
    _check_keys(where, f"{at}.", spec, allowed_keys)

    target = spec.get("target", name)
    if target not in fields:
        raise SpaceError(f"{where}: {at}.target={target!r} is not a TrainConfig field; allowed: {_fmt_list(fields)}")
    for other in earlier:
        if other.target == target:
            raise SpaceError(f"{where}: {at}.target={target!r} is already set by params.{other.name}")
    if target in fixed:
        raise SpaceError(f"{where}: {at}.target={target!r} is also in fixed; a field is either searched or fixed")

    transform = spec.get("transform")
    if transform is not None and transform not in TRANSFORMS:
        raise SpaceError(
            f"{where}: {at}.transform={transform!r} is not a transform; allowed: {_fmt_list(TRANSFORMS)}"
        )

    param = Param(name=name, type=ptype, target=target, transform=transform)
    if ptype == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: {at}.values missing or empty; a choice needs a non-empty list")
        for i, v in enumerate(values):
            # Optuna's categorical distribution stores only these types.
            if not isinstance(v, (str, int, float, bool)):
                raise SpaceError(f"{where}: {at}.values[{i}]={v!r}; allowed: strings, numbers, booleans")
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{where}: {at}.values has duplicates: {_fmt_list(values)}")
        param.values = list(values)
    else:
        _compile_range(where, at, ptype, spec, param)

    if transform is not None:
        tf = TRANSFORMS[transform]
        for v in param.probe_values():
            if not _is_number(v) or not tf.accepts(v):
                raise SpaceError(
                    f"{where}: {at}: value {v!r} is outside transform {transform}'s domain; allowed: {tf.domain}"
                )

    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise SpaceError(f"{where}: {at}.when must be a mapping of param or field to value(s)")
    earlier_by_name = {p.name: p for p in earlier}
    for key, allowed in when.items():
        if key not in earlier_by_name and key not in fields:
            raise SpaceError(
                f"{where}: {at}.when.{key} is neither an earlier param nor a TrainConfig field; "
                f"allowed: {_fmt_list([*earlier_by_name, *fields])}"
            )
        if key not in earlier_by_name and any(p.target == key for p in earlier):
            owner = next(p.name for p in earlier if p.target == key)
            raise SpaceError(f"{where}: {at}.when.{key}: the field is searched by params.{owner}; name the param")
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values:
            raise SpaceError(f"{where}: {at}.when.{key} is an empty list; it would never hold")
        if key in earlier_by_name:
            for v in values:
                if not earlier_by_name[key].contains(v):
                    raise SpaceError(
                        f"{where}: {at}.when.{key}={v!r} is outside params.{key}'s domain; "
                        f"allowed: {earlier_by_name[key].domain()}"
                    )
        param.when[key] = list(values)
    return param


def _compile_range(where: str, at: str, ptype: str, spec: Mapping[str, Any], param: Param) -> None:
    integer = ptype in ("int", "logint")
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(f"{where}: {at}.{key} missing; required for type {ptype}")
        value = spec[key]
        if not (_is_int(value) if integer else _is_number(value)):
            kind = "an integer" if integer else "a finite number"
            raise SpaceError(f"{where}: {at}.{key}={value!r} must be {kind}")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise SpaceError(f"{where}: {at}: low={low} must be < high={high}")
    if ptype == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {at}.low={low} must be > 0 for type loguniform")
    if ptype == "logint" and low < 1:
        raise SpaceError(f"{where}: {at}.low={low} must be >= 1 for type logint")
    param.low, param.high = (int(low), int(high)) if integer else (float(low), float(high))
    if ptype == "quniform":
        q = spec.get("q")
        if not _is_number(q) or q <= 0:
            raise SpaceError(f"{where}: {at}.q={q!r} missing or not > 0; required for type quniform")
        n = (high - low) / q
        if not math.isclose(n, round(n), abs_tol=1e-9):
            # Optuna would silently move `high` onto the grid; say so instead.
            raise SpaceError(f"{where}: {at}: high - low = {high - low} is not a multiple of q={q}")
        param.q = float(q)
    if ptype == "int":
        step = spec.get("step", 1)
        if not _is_int(step) or step < 1:
            raise SpaceError(f"{where}: {at}.step={step!r} must be an integer >= 1")
        if (high - low) % step:
            raise SpaceError(f"{where}: {at}: high - low = {high - low} is not a multiple of step={step}")
        param.step = step


def _compile_budget(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: budget must be a mapping; allowed keys: {_fmt_list(BUDGET_KEYS)}")
    _check_keys(where, "budget.", raw, BUDGET_KEYS)
    asha_raw = raw.get("asha") or {}
    if not isinstance(asha_raw, dict):
        raise SpaceError(f"{where}: budget.asha must be a mapping; allowed keys: {_fmt_list(ASHA_KEYS)}")
    _check_keys(where, "budget.asha.", asha_raw, ASHA_KEYS)
    budget = {**DEFAULT_BUDGET, **raw, "asha": {**DEFAULT_BUDGET["asha"], **asha_raw}}
    for key in ("num_samples", "max_concurrent"):
        if not _is_int(budget[key]) or budget[key] < 1:
            raise SpaceError(f"{where}: budget.{key}={budget[key]!r} must be an integer >= 1")
    if budget["scheduler"] not in SCHEDULERS:
        raise SpaceError(f"{where}: budget.scheduler={budget['scheduler']!r}; allowed: {_fmt_list(SCHEDULERS)}")
    asha = budget["asha"]
    if not isinstance(asha["time_attr"], str) or not asha["time_attr"]:
        raise SpaceError(f"{where}: budget.asha.time_attr={asha['time_attr']!r} must be a reported metric name")
    for key in ("max_t", "grace_period"):
        if not _is_number(asha[key]) or asha[key] <= 0:
            raise SpaceError(f"{where}: budget.asha.{key}={asha[key]!r} must be a number > 0")
    if asha["grace_period"] > asha["max_t"]:
        raise SpaceError(
            f"{where}: budget.asha.grace_period={asha['grace_period']} must be <= max_t={asha['max_t']}"
        )
    if not _is_number(asha["reduction_factor"]) or asha["reduction_factor"] <= 1:
        raise SpaceError(f"{where}: budget.asha.reduction_factor={asha['reduction_factor']!r} must be > 1")
    return budget
