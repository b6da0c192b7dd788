"""The parameter model: a searched Param (its Optuna distribution, target field and `when`) and value transforms.

Transforms: ``ratio_to_fraction`` maps k >= 0 to k / (1 + k) (alpha searched as the supplement's
ratio k = alpha / (1 - alpha), Fig. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from spaces.errors import fmt_list

if TYPE_CHECKING:  # optuna is only needed by whoever passes a trial in
    import optuna

PARAM_TYPES = ("choice", "uniform", "loguniform", "quniform", "int", "logint")


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


# --- values -----------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


# --- the parameter ----------------------------------------------------------------------------
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
            return any(value == v and (type(value) is type(v) or (is_number(value) and is_number(v)))
                       for v in self.values)
        if not is_number(value) or not (self.low <= value <= self.high):
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
            return fmt_list(self.values)
        extra = f" (step {self.q})" if self.type == "quniform" else f" (step {self.step})" if self.step != 1 else ""
        return f"{self.low} <= value <= {self.high}{extra}"

    def probe_values(self) -> list[Any]:
        """Values validate() builds a TrainConfig from: every choice, or the ends of a range."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]
