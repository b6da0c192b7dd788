"""What `dry_run=true` prints: the preflighted plan of a search, before anything starts or is written."""

from __future__ import annotations

import textwrap
from typing import Any

from search.plan import SearchPlan, expected_trial_epochs, planned_epochs

WIDTH = 100
LABEL = 14


def _line(label: str, text: str) -> list[str]:
    """'label         text', wrapped under itself."""
    return textwrap.wrap(text, WIDTH, initial_indent=f"  {label:<{LABEL}}", subsequent_indent=" " * (LABEL + 2),
                         break_on_hyphens=False, break_long_words=False) or [f"  {label}"]


def _count(n: float, word: str) -> str:
    n_text = f"{n:g}"
    return f"{n_text} {word}" + ("" if n == 1 else "s")


def resources(cfg: dict[str, Any]) -> str:
    """One trial's resources in words, with where a null trial.gpus was decided."""
    from search.ray_runtime import local_gpus, trial_resources

    need = trial_resources(cfg)
    text = f"{_count(need['cpu'], 'CPU')}, {_count(need['gpu'], 'GPU')}"
    if cfg["trial"]["gpus"] is None:
        text += " (trial.gpus=null: " + ("CUDA is visible here)" if local_gpus() else "no CUDA here: trials train on the CPU)")
    elif 0 < need["gpu"] < 1:
        text += f" ({int(1 // need['gpu'])} trials share a GPU; their memory is checked before the search)"
    if cfg["ray"]["address"]:
        text += f"; on the Ray cluster at {cfg['ray']['address']}"
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
    from search.teachers import REGISTERED_PREFIX, checkpoint_for
    from trainables.teachers import get_teacher

    if not plan.teachers:
        return ["none (no method in play uses a teacher)"]
    out = []
    for name in plan.teachers:
        path = checkpoint_for(name, plan.base_train)
        epochs = plan.cfg["teachers"]["epochs"] or plan.base_train["epochs"]
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
                             f"Optuna TPE seed {cfg['seed']}")
    lines += _line("per trial", f"{resources(cfg)}; student {base['student']}, method {base['method']}, "
                                f"batch {base['batch_size']}, device {base['device']}")
    lines += _line("trial-epochs", trial_epochs_text(plan))
    for i, text in enumerate(data_lines(plan)):
        lines += _line("data" if i == 0 else "", text)
    for i, text in enumerate(teacher_lines(plan, sources)):
        lines += _line("teachers" if i == 0 else "", text)
    if base.get("rsl_cache_dir"):
        lines += _line("soft labels", f"{base['rsl_cache_dir']} (computed once per epoch, shared by the trials)")
    lines += _line("storage", f"{plan.experiment_path} (Ray state, trial checkpoints)"
                              + ("; resume=true continues the search saved there" if cfg["resume"] else ""))
    if cfg["tracking"]["enabled"]:
        lines += _line("tracking", f"{cfg['tracking']['uri']} (MLflow experiment '{plan.name}')")
    else:
        lines += _line("tracking", "off (tracking.enabled=false)")
    lines += _line("study", f"{plan.study_url} (Optuna study '{plan.name}')" if plan.study_url
                   else "in memory (no local database: set optuna.storage= for optuna-dashboard)")
    return "\n".join(lines) + "\n"
