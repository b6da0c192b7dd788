"""The search plan: the command line turned into everything decided before Ray starts (nothing is written)."""

from __future__ import annotations

import itertools
import json
import math
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from search.config import compose_config, default_name, resolve_paths
from search.errors import SearchInputError
from search.storage import NAME_RULE, check_name
from spaces import Space, load_space
from trainables.config import NO_TEACHER, TrainConfig

log = logging.getLogger("search")

MAX_ENUMERATED = 10_000  # configurations of a space's choices enumerated for its expected schedule


@dataclass
class SearchPlan:
    """Everything decided before Ray starts: resolved config, space, budget, teachers."""

    cfg: dict[str, Any]
    name: str
    profile: str
    space: Space
    base_train: dict[str, Any]
    num_samples: int
    max_concurrent: int
    scheduler: str
    teachers: list[str]
    epoch_values: list[float] = field(default_factory=list)
    """The schedule (train.epochs) of each distinct configuration of the space's choices (see schedules)."""

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps this search's state and trial checkpoints."""
        return f"{self.cfg['storage'].rstrip('/')}/{self.name}"

    @cached_property
    def saved(self) -> dict[str, Any] | None:
        """The description saved in storage under this name (search.record), read once when first asked (planning
        itself touches no storage); None for a new name or a search of an older version."""
        from search import record

        return record.read(self.experiment_path)  # JSON only: nothing is unpickled before the trust check

    @cached_property
    def study_url(self) -> str | None:
        """The Optuna study's database (None: in memory): for resume=true where the search started it (its saved
        description says), else optuna.storage, beside a sqlite tracking store, or in local storage."""
        from search import record
        from search.optuna_study import study_storage_url

        cfg = self.cfg
        if cfg["resume"] and self.saved and record.STUDY in self.saved:
            return self.saved[record.STUDY]
        tracking = cfg["tracking"]["uri"] if cfg["tracking"]["enabled"] else None
        return study_storage_url(tracking, cfg["storage"], cfg["optuna"]["storage"])


def plan_search(overrides: list[str], cwd: Path | None = None) -> SearchPlan:
    """Compose and check everything (config, space keys, teachers' names); raises one-line errors."""
    from search.keys import validate

    composed = compose_config(overrides)
    validate(composed)
    cfg = resolve_paths(composed, cwd)
    profile = cfg["profile_name"]
    base = TrainConfig.from_dict(cfg["train"]).to_dict()
    space = load_space(str(cfg["space"]), profile)
    space.validate(base)
    budget = space.budget
    if cfg["resume"] and not cfg["name"]:
        raise SearchInputError("resume=true needs name=<the search to continue>")
    if not str(cfg["name"]).strip() and any(o.split("=", 1)[0].lstrip("+~") == "name" for o in overrides):
        # name= given but empty (e.g. name=$UNSET in a script): not the same as leaving it out
        raise SearchInputError(f"name={cfg['name']!r} is not allowed; allowed: {NAME_RULE} "
                               f"(leave name out for <space>-<profile>-<time>)")
    name = str(cfg["name"]) or default_name(str(cfg["space"]), profile)
    check_name(name)  # before the name becomes a path (experiment_path, the saved description, the cache)
    base["rsl_cache_dir"] = rsl_cache_dir(cfg, name)
    scheduler = cfg["scheduler"] or budget.get("scheduler", "asha")  # the key table checked cfg's value
    num_samples = int(cfg["num_samples"] or budget["num_samples"])
    combos = choice_overrides(space)
    distinct = None if combos is None or any(p.type != "choice" for p in space.params) else len(combos)
    if distinct is not None and num_samples > distinct:
        # Same config and same seed give the same run: more trials than configurations only repeat work.
        log.warning("space %s has %d distinct configurations; running %d trials, not %d",
                    space.name, distinct, distinct, num_samples)
        num_samples = distinct
    return SearchPlan(
        cfg=cfg, name=name, profile=profile, space=space, base_train=base,
        num_samples=num_samples,
        max_concurrent=int(cfg["max_concurrent"] or budget["max_concurrent"]),
        scheduler=scheduler, teachers=teachers_in_play(space), epoch_values=schedules(space, base, combos))


def choice_overrides(space: Space) -> list[dict[str, Any]] | None:
    """The distinct define-by-run overrides over every combination of the space's choice params (conditionals and
    recipes applied); None when there are more than MAX_ENUMERATED combinations."""
    choices = [p for p in space.params if p.type == "choice"]
    if math.prod(len(p.values) for p in choices) > MAX_ENUMERATED:
        return None
    distinct = {}
    for combo in itertools.product(*(p.values for p in choices)):
        overrides = space.train_overrides({p.name: v for p, v in zip(choices, combo)})
        distinct[json.dumps(overrides, sort_keys=True, default=str)] = overrides
    return list(distinct.values())


def schedules(space: Space, base: dict[str, Any], combos: list[dict[str, Any]] | None) -> list[float]:
    """The schedule (train.epochs) of each distinct configuration of the space's choices, recipes applied (a
    method space mixes 100-, 200- and 300-epoch rows); a range param on epochs counts as its midpoint."""
    for p in space.params:
        if p.target == "epochs" and p.type != "choice":
            return [(p.low + p.high) / 2]
    epochs = float(base["epochs"])
    return [float(o.get("train/epochs", epochs)) for o in combos or []] or [epochs]


def planned_epochs(plan: SearchPlan) -> float:
    """Epochs of one trial's schedule: train.epochs, or the mean of the schedules a space searches."""
    return sum(plan.epoch_values) / len(plan.epoch_values)


def expected_trial_epochs(plan: SearchPlan) -> tuple[int, int | None]:
    """(trial-epochs if every trial ran its whole schedule, expected trial-epochs under ASHA or None without an
    estimate): what the console's ETA and a dry run count with."""
    full = int(round(plan.num_samples * planned_epochs(plan)))
    if plan.scheduler != "asha":
        return full, full
    asha = plan.space.budget["asha"]
    if asha["time_attr"] != "schedule_pct":
        return full, None  # rungs in some other unit: no estimate in trial-epochs
    values = plan.epoch_values
    expected = sum(asha_expected_trial_epochs(plan.num_samples, e, asha["grace_period"], asha["reduction_factor"],
                                              asha["max_t"], rounded=False) for e in values) / len(values)
    return full, int(round(expected))


def asha_expected_trial_epochs(num_samples: int, epochs: float, grace_period: float, reduction_factor: float,
                               max_t: float = 100.0, rounded: bool = True) -> float:
    """Expected trial-epochs of a search under ASHA on schedule_pct (synchronous halving's expectation).

    Rungs sit at grace_period * reduction_factor**k below max_t, as Ray's ASHA places them; a
    fraction 1/reduction_factor of the trials passes each. A trial is judged at a rung on the first
    epoch that reaches it (ceil(rung * epochs / max_t)), so a short schedule stops later than its
    rung's share. Asynchronous promotion lets a few more through early in a search, so this is a
    lower estimate; without rungs below max_t it is num_samples * epochs.
    """
    rungs = []
    t = float(grace_period)
    while t < max_t:
        rungs.append(t)
        t *= reduction_factor
    per_trial = epochs / reduction_factor ** len(rungs)  # the survivors of every rung run the whole schedule
    for k, rung in enumerate(rungs):
        stopped_here = 1 / reduction_factor ** k - 1 / reduction_factor ** (k + 1)
        per_trial += stopped_here * min(math.ceil(rung * epochs / max_t - 1e-9), epochs)
    total = num_samples * per_trial
    return int(round(total)) if rounded else total


def rsl_cache_dir(cfg: dict[str, Any], name: str) -> str:
    """Where the search's trials share soft labels: train.rsl_cache_dir if given, else <storage>/<name>/rsl_cache; empty with rsl_cache=false."""
    from trainables.paths import is_uri

    if not cfg["rsl_cache"]:
        return ""
    if cfg["train"].get("rsl_cache_dir"):
        return str(cfg["train"]["rsl_cache_dir"])
    if is_uri(cfg["storage"]):
        # The cache needs a file system with atomic rename and exclusive create (local disk, NFS).
        log.warning("rsl_cache: storage %s is not a mounted folder, so trials do not share soft labels; "
                    "give train.rsl_cache_dir=/a/shared/folder to share them", cfg["storage"])
        return ""
    return f"{cfg['storage'].rstrip('/')}/{name}/rsl_cache"


def teachers_in_play(space: Space) -> list[str]:
    """Teacher names some trial of this space may load (none when no method in play uses one)."""
    from trainables.methods import METHODS

    if not any(METHODS.get(m).needs_teacher for m in space.field_values("method")):
        return []
    return sorted(t for t in space.field_values("teacher") if t != NO_TEACHER)
