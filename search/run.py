"""`python -m search.run space=alpha [profile=smoke] [key=value ...]`: one search on Ray Tune.

Optuna (TPE, seeded) proposes trials from the space's YAML, ASHA stops weak ones on
validation PGD accuracy, every trial checkpoints each epoch, and MLflow records the search
(parent run) and each trial (child run) from this driver process.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.config import compose_config, default_name, resolve_paths
from search.errors import SearchInputError, run_cli
from spaces import Space, load_space
from trainables.config import NO_TEACHER, TrainConfig

log = logging.getLogger("search")

REPO = Path(__file__).resolve().parents[1]


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
    name = cfg["name"] or default_name(str(cfg["space"]), profile)
    if cfg["resume"] and not cfg["name"]:
        raise SearchInputError("resume=true needs name=<the search to continue>")
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


def distinct_configs(space: Space) -> int | None:
    """How many different trial configs a space of choices can produce (conditionals applied); None if unbounded."""
    if any(p.type != "choice" for p in space.params):
        return None
    names = [p.name for p in space.params]
    combos = itertools.product(*(p.values for p in space.params))
    return len({json.dumps(space.train_overrides(dict(zip(names, combo))), sort_keys=True, default=str)
                for combo in combos})


def teachers_in_play(space: Space, base: dict[str, Any]) -> list[str]:
    """Teacher names some trial of this space may load (none when no method in play uses one)."""
    from trainables.methods import METHODS

    values: dict[str, set] = {"teacher": {base["teacher"]}, "method": {base["method"]}}
    for key in values:
        if key in space.fixed:
            values[key] = {space.fixed[key]}
    for param in space.params:
        if param.target in values and param.type == "choice":
            values[param.target] |= set(param.values)
    if not any(METHODS.get(m).needs_teacher for m in values["method"]):
        return []
    return sorted(t for t in values["teacher"] if t != NO_TEACHER)


def tune_objects(plan: SearchPlan) -> dict[str, Any]:
    """Searcher, scheduler, trainable and run config for the Tuner (imports Ray)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search.progress import Progress
    from search.tracking import MLflowTracker, git_state, library_versions
    from trainables.ray_adapter import train_trial

    space, cfg = plan.space, plan.cfg
    searcher = OptunaSearch(space=space.define_by_run, metric=space.metric, mode=space.mode, seed=cfg["seed"],
                            points_to_evaluate=space.points_to_evaluate or None)
    if plan.scheduler == "asha":
        asha = space.budget["asha"]
        scheduler = ASHAScheduler(time_attr=asha["time_attr"], metric=space.metric, mode=space.mode,
                                  max_t=asha["max_t"], grace_period=asha["grace_period"],
                                  reduction_factor=asha["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(train_trial, trial_resources(cfg))
    callbacks = [Progress(space.metric)]
    if cfg["tracking"]["enabled"]:
        tags = {"rslad.space": space.name, "rslad.profile": plan.profile, "rslad.metric": space.metric,
                "rslad.mode": space.mode, "rslad.storage": plan.experiment_path,
                **git_state(REPO), **library_versions()}
        params = {"space": space.name, "profile": plan.profile, "num_samples": plan.num_samples,
                  "max_concurrent": plan.max_concurrent, "seed": cfg["seed"], "scheduler": plan.scheduler}
        artifacts = {"search.yaml": yaml.safe_dump(cfg, sort_keys=False),
                     "space.yaml": Path(space.source).read_text()}
        callbacks.insert(0, MLflowTracker(cfg["tracking"]["uri"], plan.name, tags, params, artifacts))
    run_config = tune.RunConfig(
        name=plan.name, storage_path=cfg["storage"], callbacks=callbacks, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=cfg["trial"]["max_failures"]))
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.num_samples,
                                  max_concurrent_trials=plan.max_concurrent)
    param_space = {"train": plan.base_train, "trial": {"checkpoint_every": cfg["trial"]["checkpoint_every"]}}
    return {"trainable": trainable, "run_config": run_config, "tune_config": tune_config, "param_space": param_space}


def trial_resources(cfg: dict[str, Any]) -> dict[str, float]:
    """Ray resources of one trial: trial.cpus, and trial.gpus (None: 1 when CUDA is visible to the driver, else 0)."""
    gpus = cfg["trial"]["gpus"]
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    return {"cpu": cfg["trial"]["cpus"], "gpu": gpus}


def start_ray(cfg: dict[str, Any]) -> None:
    """Join the cluster (ray.address=auto or an address) or start a local Ray for this command."""
    import ray

    # Sub-second epochs trigger Tune's "snapshotting too often" warning on every result.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = cfg["ray"]["address"] or None
    if address is None:
        ray.init(num_cpus=cfg["ray"]["num_cpus"], include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    else:
        ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)


def run_search(plan: SearchPlan):
    """Run (or resume) the search; returns Tune's ResultGrid."""
    from ray import tune

    from search.teachers import ensure_teachers

    ensure_teachers(plan)  # before Ray starts: a missing teacher in profile=paper fails in seconds
    start_ray(plan.cfg)
    objects = tune_objects(plan)
    if plan.cfg["resume"]:
        if not tune.Tuner.can_restore(plan.experiment_path):
            raise SearchInputError(f"resume=true but there is no search to continue at {plan.experiment_path}")
        log.info("resuming %s from %s", plan.name, plan.experiment_path)
        tuner = tune.Tuner.restore(plan.experiment_path, trainable=objects["trainable"],
                                   resume_unfinished=True, resume_errored=True)
    else:
        if tune.Tuner.can_restore(plan.experiment_path):
            raise SearchInputError(
                f"a search named {plan.name!r} already exists at {plan.experiment_path}; "
                f"continue it with resume=true or pick another name=")
        tuner = tune.Tuner(objects["trainable"], param_space=objects["param_space"],
                           tune_config=objects["tune_config"], run_config=objects["run_config"])
    return tuner.fit()


def summary_table(results, metric: str, top_k: int) -> str:
    """The top trials as a fixed-width table: searched params, best validation accuracies, epochs run."""
    rows = []
    for result in results:
        if result.metrics is None or f"best_{metric}" not in result.metrics:
            continue
        history = result.metrics_dataframe
        best_row = history.loc[history[metric].idxmax()] if history is not None and len(history) else result.metrics
        params = {k: v for k, v in result.config.items() if k not in ("train", "trial")}
        rows.append({
            "trial": str(result.metrics.get("trial_id", "?")),
            "params": ", ".join(f"{k}={_short(v)}" for k, v in sorted(params.items())) or "-",
            metric: float(best_row[metric]),
            "val_clean_acc": float(best_row["val_clean_acc"]),
            "best_epoch": int(best_row["epoch"]),
            "epochs_run": int(result.metrics.get("epoch", 0)),
            "of": int(result.config["train"]["epochs"]),
        })
    rows.sort(key=lambda r: r[metric], reverse=True)
    header = (f"{'rank':>4}  {'trial':<8}  {'params':<48} {metric:>12} {'val_clean_acc':>13} "
              f"{'best_epoch':>10} {'epochs_run':>10}")
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows[:top_k], 1):
        lines.append(f"{i:>4}  {r['trial']:<8}  {r['params'][:48]:<48} {r[metric]:>12.4f} {r['val_clean_acc']:>13.4f} "
                     f"{r['best_epoch']:>10} {r['epochs_run']:>6}/{r['of']:<3}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> int:
    """Plan, run, summarise."""
    plan = plan_search(argv)
    log.info("search %s: space=%s profile=%s, %d trials (%d at once), scheduler=%s, storage=%s",
             plan.name, plan.space.name, plan.profile, plan.num_samples, plan.max_concurrent,
             plan.scheduler, plan.experiment_path)
    results = run_search(plan)
    errors = [r for r in results if r.error]
    print(f"\nsearch {plan.name}: top trials by {plan.space.metric} (validation split)")
    print(summary_table(results, plan.space.metric, plan.cfg["top_k"]))
    if errors:
        print(f"{len(errors)} trial(s) failed; see their MLflow runs (tag rslad.error)")
    uri = plan.cfg["tracking"]["uri"]
    if plan.cfg["tracking"]["enabled"]:
        print(f"\nbrowse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   (experiment '{plan.name}')")
    print(f"resume: python -m search.run {' '.join(a for a in argv if not a.startswith(('name=', 'resume=')))} "
          f"name={plan.name} resume=true")
    return 1 if errors and len(errors) == len(results) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
