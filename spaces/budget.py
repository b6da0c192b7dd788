"""A space's budget: trials, concurrency and the ASHA scheduler's settings, with their defaults and checks."""

from __future__ import annotations

from typing import Any

from spaces.errors import SpaceError, check_keys, fmt_list
from spaces.params import is_int, is_number

SCHEDULERS = ("asha", "none")
BUDGET_KEYS = ("num_samples", "max_concurrent", "scheduler", "asha")
ASHA_KEYS = ("time_attr", "max_t", "grace_period", "reduction_factor")
DEFAULT_BUDGET: dict[str, Any] = {
    "num_samples": 8,
    "max_concurrent": 2,
    "scheduler": "asha",
    "asha": {"time_attr": "schedule_pct", "max_t": 100, "grace_period": 25, "reduction_factor": 3},
}


def compile_budget(where: str, raw: Any) -> dict[str, Any]:
    """The file's `budget` merged over DEFAULT_BUDGET and checked; SpaceError names the first bad key."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: budget must be a mapping; allowed keys: {fmt_list(BUDGET_KEYS)}")
    check_keys(where, "budget.", raw, BUDGET_KEYS)
    asha_raw = raw.get("asha") or {}
    if not isinstance(asha_raw, dict):
        raise SpaceError(f"{where}: budget.asha must be a mapping; allowed keys: {fmt_list(ASHA_KEYS)}")
    check_keys(where, "budget.asha.", asha_raw, ASHA_KEYS)
    budget = {**DEFAULT_BUDGET, **raw, "asha": {**DEFAULT_BUDGET["asha"], **asha_raw}}
    for key in ("num_samples", "max_concurrent"):
        if not is_int(budget[key]) or budget[key] < 1:
            raise SpaceError(f"{where}: budget.{key}={budget[key]!r} must be an integer >= 1")
    if budget["scheduler"] not in SCHEDULERS:
        raise SpaceError(f"{where}: budget.scheduler={budget['scheduler']!r}; allowed: {fmt_list(SCHEDULERS)}")
    asha = budget["asha"]
    if not isinstance(asha["time_attr"], str) or not asha["time_attr"]:
        raise SpaceError(f"{where}: budget.asha.time_attr={asha['time_attr']!r} must be a reported metric name")
    for key in ("max_t", "grace_period"):
        if not is_number(asha[key]) or asha[key] <= 0:
            raise SpaceError(f"{where}: budget.asha.{key}={asha[key]!r} must be a number > 0")
    if asha["grace_period"] > asha["max_t"]:
        raise SpaceError(
            f"{where}: budget.asha.grace_period={asha['grace_period']} must be <= max_t={asha['max_t']}"
        )
    if not is_number(asha["reduction_factor"]) or asha["reduction_factor"] <= 1:
        raise SpaceError(f"{where}: budget.asha.reduction_factor={asha['reduction_factor']!r} must be > 1")
    return budget
