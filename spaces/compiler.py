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

Transforms (``spaces/params.py``), recipe expansion and the trial-time API (``spaces/space.py``),
validation against TrainConfig (``spaces/validation.py``), the budget (``spaces/budget.py``), YAML
loading and profile merging (``spaces/yaml_loading.py``) and messages (``spaces/errors.py``) live
beside this module; it turns one merged document into a Space and checks its structure.

The package imports trainables (config and recipes) and optuna, never ray or hydra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from spaces.budget import compile_budget
from spaces.errors import (
    DEFAULT_PROFILE,
    SPACES_DIR,
    SpaceError,
    check_keys,
    display_name,
    fmt_list,
)
from spaces.params import PARAM_TYPES, TRANSFORMS, Param, is_int, is_number

from spaces.space import Space
from spaces.validation import validate
from spaces.yaml_loading import read_profile
from trainables.config import config_fields

MODES = ("max", "min")
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


def list_spaces(spaces_dir: str | Path | None = None) -> list[str]:
    """Names (YAML stems) of the space files in spaces_dir (default: the shipped ones)."""
    folder = Path(spaces_dir) if spaces_dir is not None else SPACES_DIR
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def load_space(name: str, profile: str = DEFAULT_PROFILE, spaces_dir: str | Path | None = None, *,
               base: Mapping[str, Any]) -> Space:
    """Read spaces_dir/<name>.yaml, merge the profile's overrides, check its structure, then check every value it
    can give against the base train config `base` (a TrainConfig dict: the profile and command line's); SpaceError
    on the first problem. The Space returned is whole: its base recorded, every trial config buildable."""
    folder = Path(spaces_dir).resolve() if spaces_dir is not None else SPACES_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise SpaceError(f"space={name!r} not found; available: {fmt_list(list_spaces(folder))}")
    doc = read_profile(path, profile)
    space = _compile(name, profile, path, display_name(path, profile), doc, dict(base))
    validate(space)
    return space


def _compile(name: str, profile: str, path: Path, where: str, doc: dict[str, Any], base: dict[str, Any]) -> Space:
    fields = config_fields()
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SpaceError(f"{where}: description must be a string")
    metric = doc.get("metric", "val_pgd_acc")
    if not isinstance(metric, str) or not metric:
        raise SpaceError(f"{where}: metric={metric!r} must be a metric name reported by the trainable")
    mode = doc.get("mode", "max")
    if mode not in MODES:
        raise SpaceError(f"{where}: mode={mode!r}; allowed: {fmt_list(MODES)}")

    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: fixed must be a mapping of TrainConfig field to value")
    for key in fixed:
        if key not in fields:
            raise SpaceError(f"{where}: fixed.{key} is not a TrainConfig field; allowed: {fmt_list(fields)}")

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
                    f"allowed: {fmt_list(by_name)}"
                )
            if not by_name[key].contains(value):
                raise SpaceError(
                    f"{where}: points_to_evaluate[{i}].{key}={value!r} is outside the domain; "
                    f"allowed: {by_name[key].domain()}"
                )

    budget = compile_budget(where, doc.get("budget") or {})
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
        base=base,
    )


def _compile_param(
    where: str, name: str, spec: Any, earlier: list[Param], fixed: Mapping[str, Any], fields: list[str]
) -> Param:
    at = f"params.{name}"
    if "/" in name or "." in name or not name.isidentifier() or name in RESERVED_PARAM_NAMES:
        raise SpaceError(
            f"{where}: {at}: a param name must be an identifier other than {fmt_list(RESERVED_PARAM_NAMES)}"
            " (Ray nests '/' keys and the trial config uses those names)"
        )
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {at} must be a mapping with a type; allowed types: {fmt_list(PARAM_TYPES)}")
    ptype = spec.get("type")
    if ptype not in PARAM_TYPES:
        raise SpaceError(f"{where}: {at}.type={ptype!r} is not a param type; allowed: {fmt_list(PARAM_TYPES)}")
    allowed_keys = _COMMON_PARAM_KEYS + _PARAM_KEYS[ptype]
    check_keys(where, f"{at}.", spec, allowed_keys)

    target = spec.get("target", name)
    if target not in fields:
        raise SpaceError(f"{where}: {at}.target={target!r} is not a TrainConfig field; allowed: {fmt_list(fields)}")
    for other in earlier:
        if other.target == target:
            raise SpaceError(f"{where}: {at}.target={target!r} is already set by params.{other.name}")
    if target in fixed:
        raise SpaceError(f"{where}: {at}.target={target!r} is also in fixed; a field is either searched or fixed")

    transform = spec.get("transform")
    if transform is not None and transform not in TRANSFORMS:
        raise SpaceError(
            f"{where}: {at}.transform={transform!r} is not a transform; allowed: {fmt_list(TRANSFORMS)}"
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
            raise SpaceError(f"{where}: {at}.values has duplicates: {fmt_list(values)}")
        param.values = list(values)
    else:
        _compile_range(where, at, ptype, spec, param)

    if transform is not None:
        tf = TRANSFORMS[transform]
        for v in param.probe_values():
            if not is_number(v) or not tf.accepts(v):
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
                f"allowed: {fmt_list([*earlier_by_name, *fields])}"
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
        if not (is_int(value) if integer else is_number(value)):
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
        if not is_number(q) or q <= 0:
            raise SpaceError(f"{where}: {at}.q={q!r} missing or not > 0; required for type quniform")
        n = (high - low) / q
        if not math.isclose(n, round(n), abs_tol=1e-9):
            # Optuna would silently move `high` onto the grid; say so instead.
            raise SpaceError(f"{where}: {at}: high - low = {high - low} is not a multiple of q={q}")
        param.q = float(q)
    if ptype == "int":
        step = spec.get("step", 1)
        if not is_int(step) or step < 1:
            raise SpaceError(f"{where}: {at}.step={step!r} must be an integer >= 1")
        if (high - low) % step:
            raise SpaceError(f"{where}: {at}: high - low = {high - low} is not a multiple of step={step}")
        param.step = step
