"""Pre-flight validation of a compiled Space against TrainConfig: every value builds a config before Ray starts."""

from __future__ import annotations

import itertools
from typing import Any, Mapping

from spaces.errors import SpaceError, display_name
from spaces.params import Param
from spaces.space import Space
from trainables.config import ConfigError


def validate(space: Space) -> None:
    """Build a TrainConfig (on the space's base) for every param value (ranges: both ends) and warm start.

    Each value is tried under every assignment of earlier params that makes its `when` hold;
    SpaceError on the first bad one.
    """
    where = display_name(space.source, space.profile)
    _check_config(space, "fixed", {})
    for p in space.params:
        witnesses = _witnesses(space, p)
        if not witnesses:
            raise SpaceError(
                f"{where}: params.{p.name}.when={p.when} can never hold with this base and fixed values"
            )
        for i, value in enumerate(p.probe_values()):
            for witness in witnesses:
                key = f"params.{p.name}.values[{i}]={value!r}" if p.type == "choice" else (
                    f"params.{p.name}.{'low' if i == 0 else 'high'}={value!r}")
                _check_config(space, key, {**witness, p.name: value}, expect_active=p.name)
    by_name = {p.name: p for p in space.params}
    for i, point in enumerate(space.points_to_evaluate):
        unused = [k for k in point if k not in set(space.active_params(point))]
        if unused:
            # Optuna would silently drop the value: the warm start is not the point it claims to be.
            raise SpaceError(
                f"{where}: points_to_evaluate[{i}].{unused[0]} is never used: "
                f"params.{unused[0]}.when={by_name[unused[0]].when} does not hold for this point"
            )
        _check_config(space, f"points_to_evaluate[{i}]", point)


def _witnesses(space: Space, p: Param) -> list[dict[str, Any]]:
    """Param-value assignments of earlier params under which p's `when` holds (one per allowed combination)."""
    per_key: list[list[dict[str, Any]]] = []
    by_name = {q.name: q for q in space.params}
    for key, allowed in p.when.items():
        options: list[dict[str, Any]] = []
        if key in by_name:
            for value in allowed:
                options += [{**w, key: value} for w in _witnesses(space, by_name[key])]
        elif space.unsearched_value(key) in allowed:
            # A field the space never searches: it holds or not by the fixed values (a fixed recipe's
            # included) or the base alone.
            options.append({})
        per_key.append(options)
    result: list[dict[str, Any]] = []
    for combo in itertools.product(*per_key):
        merged: dict[str, Any] = {}
        if all(merged.setdefault(k, v) == v for w in combo for k, v in w.items()):
            result.append(merged)
    # Keep only assignments whose every param is actually active under the assignment itself.
    return [w for w in result if set(w) <= set(space.active_params(w))]


def _check_config(space: Space, key: str, params: Mapping[str, Any], expect_active: str | None = None) -> None:
    """Build the TrainConfig for these param values; SpaceError naming key if it fails or expect_active is off."""
    where = display_name(space.source, space.profile)
    if expect_active is not None and expect_active not in set(space.active_params(params)):
        raise SpaceError(f"{where}: {key} is never suggested: its `when` does not hold")
    try:
        space.train_config(params)
    except ConfigError as err:
        raise SpaceError(f"{where}: {key}: {err}") from None
