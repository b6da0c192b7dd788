"""The search plan: the command line turned into everything decided before Ray starts (nothing is written)."""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import compose_config, default_name, resolve_paths
from search.errors import SearchInputError
from search.storage import NAME_RULE
from spaces import Space, load_space
from trainables.config import NO_TEACHER, TrainConfig

log = logging.getLogger("search")


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

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps this search's state and trial checkpoints."""
        return f"{self.cfg['storage'].rstrip('/')}/{self.name}"


def plan_search(overrides: list[str], cwd: Path | None = None) -> SearchPlan:
    """Compose and check everything (config, space keys, teachers' names); raises one-line errors."""
    cfg = resolve_paths(compose_config(overrides), cwd)
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
    base["rsl_cache_dir"] = rsl_cache_dir(cfg, name)
    scheduler = cfg["scheduler"] or budget.get("scheduler", "asha")
    if scheduler not in ("asha", "none"):
        raise SearchInputError(f"scheduler={scheduler!r} is not allowed; allowed: asha, none")
    for key in ("num_samples", "max_concurrent"):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise SearchInputError(f"{key}={cfg[key]!r} must be an integer >= 1")
    num_samples = int(cfg["num_samples"] or budget["num_samples"])
    distinct = distinct_configs(space)
    if distinct is not None and num_samples > distinct:
        # Same config and same seed give the same run: more trials than configurations only repeat work.
        log.warning("space %s has %d distinct configurations; running %d trials, not %d",
                    space.name, distinct, distinct, num_samples)
        num_samples = distinct
    return SearchPlan(
        cfg=cfg, name=name, profile=profile, space=space, base_train=base,
        num_samples=num_samples,
        max_concurrent=int(cfg["max_concurrent"] or budget["max_concurrent"]),
        scheduler=scheduler, teachers=teachers_in_play(space, base))


def rsl_cache_dir(cfg: dict[str, Any], name: str) -> str:
    """Where the search's trials share soft labels: train.rsl_cache_dir if given, else <storage>/<name>/rsl_cache; empty with rsl_cache=false."""
    from trainables.paths import is_uri

    if not isinstance(cfg["rsl_cache"], bool):
        raise SearchInputError(f"rsl_cache={cfg['rsl_cache']!r} must be true or false")
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


def distinct_configs(space: Space) -> int | None:
    """How many different trial configs a space of choices can produce (conditionals applied); None if unbounded."""
    if any(p.type != "choice" for p in space.params):
        return None
    names = [p.name for p in space.params]
    combos = itertools.product(*(p.values for p in space.params))
    return len({json.dumps(space.train_overrides(dict(zip(names, combo))), sort_keys=True, default=str)
                for combo in combos})


def values_in_play(space: Space, base: dict[str, Any], key: str) -> set:
    """Every value TrainConfig field `key` can take in some trial, recipes included (space.validate(base) has run)."""
    return space.field_values(key)


def teachers_in_play(space: Space, base: dict[str, Any]) -> list[str]:
    """Teacher names some trial of this space may load (none when no method in play uses one)."""
    from trainables.methods import METHODS

    if not any(METHODS.get(m).needs_teacher for m in values_in_play(space, base, "method")):
        return []
    return sorted(t for t in values_in_play(space, base, "teacher") if t != NO_TEACHER)
