"""The search plan: the command line turned into everything decided before Ray starts (nothing is written),
what a resume must keep of it, and its description as `dry_run=true` prints it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import textwrap
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from analysis.uncertainty import resolution_sentence, validation_images
from search.config import SearchConfig, SearchInputError, default_name, load_config
from search.driver import local_gpus, trial_resources
from search.storage import (
    NAME_RULE,
    RECORD_FORMAT,
    STUDY,
    check_name,
    read_record,
    study_storage_url,
)
from search.tracking import REGISTERED_PREFIX
from spaces import Space, load_space
from trainables.config import NO_TEACHER
from trainables.methods import METHODS
from trainables.teachers import checkpoint_path, get_teacher

log = logging.getLogger("search")

MAX_ENUMERATED = 10_000  # configurations of a space's choices enumerated for its expected schedule


@dataclass
class SearchPlan:
    """Everything decided before Ray starts: resolved config, space, budget, teachers."""

    cfg: SearchConfig
    name: str
    space: Space
    base_train: dict[str, Any]
    num_samples: int
    max_concurrent: int
    scheduler: str
    teachers: list[str]
    epoch_values: list[float] = field(default_factory=list)
    """The schedule (train.epochs) of each distinct configuration of the space's choices (see schedules)."""

    @property
    def profile(self) -> str:
        """The profile the config was composed with (paper, smoke, ...)."""
        return self.cfg.profile

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps this search's state and trial checkpoints."""
        return f"{self.cfg.storage.rstrip('/')}/{self.name}"

    @cached_property
    def saved(self) -> dict[str, Any] | None:
        """The description saved in storage under this name, read once when first asked (planning itself touches
        no storage); None for a new name."""
        return read_record(self.experiment_path)  # JSON only: nothing is unpickled before the trust check

    @cached_property
    def study_url(self) -> str | None:
        """The Optuna study's database (None: in memory): for resume=true where the search started it (its saved
        description says), else optuna.storage, beside a sqlite tracking store, or in local storage."""
        cfg = self.cfg
        if cfg.resume and self.saved and STUDY in self.saved:
            return self.saved[STUDY]
        tracking = cfg.tracking.uri if cfg.tracking.enabled else None
        return study_storage_url(tracking, cfg.storage, cfg.optuna.storage)


def plan_search(overrides: list[str], cwd: Path | None = None) -> SearchPlan:
    """Compose and check everything (config, space keys, teachers' names); raises one-line errors."""
    cfg = load_config(overrides, cwd)
    profile = cfg.profile
    base = cfg.train.to_dict()
    space = load_space(cfg.space, profile, base=base)
    budget = space.budget
    if cfg.resume and not cfg.name:
        raise SearchInputError("resume=true needs name=<the search to continue>")
    if not cfg.name.strip() and any(o.split("=", 1)[0].lstrip("+~") == "name" for o in overrides):
        # name= given but empty (e.g. name=$UNSET in a script): not the same as leaving it out
        raise SearchInputError(f"name={cfg.name!r} is not allowed; allowed: {NAME_RULE} "
                               f"(leave name out for <space>-<profile>-<time>)")
    name = cfg.name or default_name(cfg.space, profile)
    check_name(name)  # before the name becomes a path (experiment_path, the saved description, the cache)
    base["rsl_cache_dir"] = rsl_cache_dir(cfg, name)
    scheduler = cfg.scheduler or budget.get("scheduler", "asha")  # SearchConfig checked cfg's value
    num_samples = int(cfg.num_samples or budget["num_samples"])
    combos = choice_overrides(space)
    distinct = None if combos is None or any(p.type != "choice" for p in space.params) else len(combos)
    if distinct is not None and num_samples > distinct:
        # Same config and same seed give the same run: more trials than configurations only repeat work.
        log.warning("space %s has %d distinct configurations; running %d trials, not %d",
                    space.name, distinct, distinct, num_samples)
        num_samples = distinct
    return SearchPlan(
        cfg=cfg, name=name, space=space, base_train=base, num_samples=num_samples,
        max_concurrent=int(cfg.max_concurrent or budget["max_concurrent"]),
        scheduler=scheduler, teachers=teachers_in_play(space), epoch_values=schedules(space, base, combos))


# --- what a resume keeps ------------------------------------------------------------------------------------
def settings(plan: SearchPlan) -> dict[str, Any]:
    """Everything a resumed search keeps from its start, flat and JSON-safe: compared on resume."""
    cfg = plan.cfg
    keys: dict[str, Any] = {
        "space": plan.space.name,
        "space file": hashlib.sha256(Path(plan.space.source).read_bytes()).hexdigest()[:16],
        "profile": plan.profile,
        "num_samples": plan.num_samples,
        "max_concurrent": plan.max_concurrent,
        "seed": cfg.seed,
        "scheduler": plan.scheduler,
        "trial.checkpoint_every": cfg.trial.checkpoint_every,
        "trial.max_failures": cfg.trial.max_failures,
        "tracking.enabled": cfg.tracking.enabled,
    }
    keys.update({f"train.{k}": v for k, v in plan.base_train.items()})
    return json.loads(json.dumps(keys))  # tuples -> lists, as they come back from the file


def new_record(plan: SearchPlan) -> dict[str, Any]:
    """A fresh description (new search id) for `plan`."""
    return {"format": RECORD_FORMAT, "search_id": uuid.uuid4().hex, "name": plan.name,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "storage": plan.experiment_path, STUDY: plan.study_url, "settings": settings(plan)}



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


def rsl_cache_dir(cfg: SearchConfig, name: str) -> str:
    """Where the search's trials share soft labels: train.rsl_cache_dir if given, else <storage>/<name>/rsl_cache (object
    storage too: each node keeps a local copy filled from it); empty with rsl_cache=false."""
    if not cfg.rsl_cache:
        return ""
    if cfg.train.rsl_cache_dir:
        return cfg.train.rsl_cache_dir
    return f"{cfg.storage.rstrip('/')}/{name}/rsl_cache"


def teachers_in_play(space: Space) -> list[str]:
    """Teacher names some trial of this space may load (none when no method in play uses one)."""
    if not any(METHODS.get(m).needs_teacher for m in space.field_values("method")):
        return []
    return sorted(t for t in space.field_values("teacher") if t != NO_TEACHER)


# --- the description (dry_run=true) -------------------------------------------------------------------------
# What `dry_run=true` prints: the preflighted plan of a search, before anything starts or is written.

WIDTH = 100
LABEL = 14


def _line(label: str, text: str) -> list[str]:
    """'label         text', wrapped under itself."""
    return textwrap.wrap(text, WIDTH, initial_indent=f"  {label:<{LABEL}}", subsequent_indent=" " * (LABEL + 2),
                         break_on_hyphens=False, break_long_words=False) or [f"  {label}"]


def _count(n: float, word: str) -> str:
    n_text = f"{n:g}"
    return f"{n_text} {word}" + ("" if n == 1 else "s")


def resources(cfg: SearchConfig) -> str:
    """One trial's resources in words, with where a null trial.gpus was decided."""
    need = trial_resources(cfg)
    text = f"{_count(need['cpu'], 'CPU')}, {_count(need['gpu'], 'GPU')}"
    if cfg.trial.gpus is None:
        text += " (trial.gpus=null: " + ("CUDA is visible here)" if local_gpus() else "no CUDA here: trials train on the CPU)")
    elif 0 < need["gpu"] < 1:
        text += f" ({int(1 // need['gpu'])} trials share a GPU; their memory is checked before the search)"
    if cfg.ray.address:
        text += f"; on the Ray cluster at {cfg.ray.address}"
    return text


def data_lines(plan: SearchPlan) -> list[str]:
    """Each dataset in play and where it is read from."""
    out = []
    download = True in plan.space.field_values("download")
    for dataset in sorted(plan.space.field_values("dataset")):
        if dataset == "digits":
            out.append("digits: scikit-learn's bundled copy (offline)")
            continue
        for data_dir in sorted(plan.space.field_values("data_dir")):
            state = "downloaded there when missing (train.download=true)" if download else "files and checksums verified"
            out.append(f"{dataset} in {data_dir} ({state})")
    return out


def teacher_lines(plan: SearchPlan, sources: dict[str, str]) -> list[str]:
    """Each teacher in play, where its weights are, and where they will come from when missing."""
    if not plan.teachers:
        return ["none (no method in play uses a teacher)"]
    out = []
    for name in plan.teachers:
        path = checkpoint_path(name, plan.base_train)
        epochs = plan.cfg.teachers.epochs or plan.base_train["epochs"]
        out.append({
            "file": f"{name}: {path} (found; loads)",
            "registry": f"{name}: missing, fetched from the MLflow model registry ({REGISTERED_PREFIX}{name}) "
                        f"before the search -> {path}",
            "robustbench": f"{name}: missing, downloaded from RobustBench '{get_teacher(name).robustbench_id}' "
                           f"before the search -> {path}",
            "train": f"{name}: missing, trained before the search ({epochs} epochs, teachers.auto_train=true) "
                     f"-> {path}",
        }[sources[name]])
    return out


def searched_lines(plan: SearchPlan) -> list[str]:
    """Each searched param with its domain and the train field it sets."""
    out = []
    for p in plan.space.params:
        target = f" -> train.{p.target}" + (f" ({p.transform})" if p.transform else "")
        when = f", when {p.when}" if p.when else ""
        out.append(f"{p.name}: {p.type} {p.domain()}{target}{when}")
    return out


def trial_epochs_text(plan: SearchPlan) -> str:
    """Expected trial-epochs with ASHA next to what every trial running its whole schedule would cost."""
    full, expected = expected_trial_epochs(plan)
    epochs = planned_epochs(plan)
    per_trial = f"{_count(epochs, 'epoch')} per trial" + (" on average" if len(set(plan.epoch_values)) > 1 else "")
    if plan.scheduler != "asha":
        return f"{full} ({plan.num_samples} trials x {per_trial}; scheduler none: every trial runs to its end)"
    asha = plan.space.budget["asha"]
    rule = (f"ASHA on {asha['time_attr']}: grace {asha['grace_period']:g}, reduction factor "
            f"{asha['reduction_factor']:g}, max {asha['max_t']:g}")
    if expected is None:
        return f"at most {full} ({plan.num_samples} trials x {per_trial}); {rule}"
    return (f"~{expected} expected with {rule} (a lower estimate: asynchronous promotion lets a few more through); "
            f"{full} if every trial ran its schedule ({plan.num_samples} x {per_trial})")


def describe(plan: SearchPlan, sources: dict[str, str]) -> str:
    """The plan of a preflighted search, as `dry_run=true` prints it."""
    cfg, space = plan.cfg, plan.space
    base = plan.base_train
    lines = [f"search {plan.name}: the plan (dry run: nothing was started or written)"]
    lines += _line("space", f"{space.name} ({space.source}); profile {plan.profile}; metric {space.metric} "
                            f"({space.mode}) on the validation split")
    for i, text in enumerate(searched_lines(plan)):
        lines += _line("searched" if i == 0 else "", text)
    if space.fixed:
        lines += _line("fixed", ", ".join(f"{k}={v}" for k, v in space.fixed.items()))
    if space.points_to_evaluate:
        lines += _line("warm starts", f"{len(space.points_to_evaluate)} (tried first): "
                       + "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in space.points_to_evaluate))
    lines += _line("trials", f"{plan.num_samples}, {plan.max_concurrent} at once; scheduler {plan.scheduler}; "
                             f"Optuna TPE seed {cfg.seed}")
    lines += _line("per trial", f"{resources(cfg)}; student {base['student']}, method {base['method']}, "
                                f"batch {base['batch_size']}, device {base['device']}")
    lines += _line("trial-epochs", trial_epochs_text(plan))
    n_val = validation_images(base)
    if n_val:
        where = "the validation split" if base["val_size"] else "the test set that selects (val_size=0)"
        lines += _line("resolution", f"{resolution_sentence(n_val, where)}; error bars over seeds afterwards: "
                                     f"python -m search.replicate name={plan.name}")
    for i, text in enumerate(data_lines(plan)):
        lines += _line("data" if i == 0 else "", text)
    for i, text in enumerate(teacher_lines(plan, sources)):
        lines += _line("teachers" if i == 0 else "", text)
    if base.get("rsl_cache_dir"):
        lines += _line("soft labels", f"{base['rsl_cache_dir']} (computed once per epoch, shared by the trials)")
    lines += _line("storage", f"{plan.experiment_path} (Ray state, trial checkpoints)"
                              + ("; resume=true continues the search saved there" if cfg.resume else ""))
    if cfg.tracking.enabled:
        lines += _line("tracking", f"{cfg.tracking.uri} (MLflow experiment '{plan.name}')")
    else:
        lines += _line("tracking", "off (tracking.enabled=false)")
    lines += _line("study", f"{plan.study_url} (Optuna study '{plan.name}')" if plan.study_url
                   else "in memory (no local database: set optuna.storage= for optuna-dashboard)")
    return "\n".join(lines) + "\n"
