"""`python -m search.run space=alpha [profile=smoke] [key=value ...]`: one search on Ray Tune.

Optuna (TPE, seeded) proposes trials from the space's YAML and keeps its study in a database
beside the tracking store (ASHA-stopped trials PRUNED), ASHA stops weak ones on validation PGD
accuracy, every trial checkpoints each epoch, MLflow records the search (parent run) and each
trial (child run) from this driver process, and a live console shows the trials as they run.

The driver is three steps: `plan = plan_search(argv)` and `preflight(plan)` decide and check
everything without Ray and without writing (`dry_run=true` prints the plan and stops there),
then `run_search(plan)` provides the teachers, starts Ray, writes the search's description and
runs Tune. `--help` and `--cfg job` answer before any of it.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from analysis.uncertainty import interval_text, resolution_sentence
from search import driver, teacher_weights
from search.cli import answer_help_or_cfg, read_command_line, run_cli
from search.config import SearchInputError
from search.console import LiveConsole
from search.intervals import trial_interval
from search.plan import (
    SearchPlan,
    describe,
    expected_trial_epochs,
    new_record,
    plan_search,
)
from search.preflight import preflight
from search.storage import make_private, write_record
from search.study import ResumableASHA, SchedulerState, StudySearch
from search.tracking import (
    MLflowTracker,
    browse_lines,
    failed_reason,
    git_state,
    library_versions,
    searched_values,
    short_value,
    trial_state,
    use_current_command,
)
from trainables.memory import MEMORY_KEYS, check_packing, memory_variants
from trainables.ray_adapter import train_trial
from trainables.schema import METRIC_TAG, SEARCH_ID, STORAGE
from trainables.teachers import checkpoint_path

log = logging.getLogger("search")

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS_KEPT = 2  # a torn newest checkpoint falls back to the one before it


def tune_objects(plan: SearchPlan, search_id: str | None) -> dict[str, Any]:
    """Searcher, scheduler, trainable and run config for the Tuner (imports Ray)."""
    from ray import tune  # heavy: only once the search runs
    from ray.tune.schedulers import FIFOScheduler

    space, cfg = plan.space, plan.cfg
    searcher = StudySearch(space.define_by_run, space.metric, space.mode, study_name=plan.name,
                           storage_url=plan.study_url, seed=cfg.seed,
                           points_to_evaluate=space.points_to_evaluate or None)
    callbacks: list = [LiveConsole(plan.name, space.metric, plan.num_samples,
                                   planned_trial_epochs=expected_trial_epochs(plan)[1])]
    if plan.scheduler == "asha":
        asha = space.budget["asha"]
        scheduler = ResumableASHA(time_attr=asha["time_attr"], metric=space.metric, mode=space.mode,
                                  max_t=asha["max_t"], grace_period=asha["grace_period"],
                                  reduction_factor=asha["reduction_factor"])
        callbacks.append(SchedulerState(scheduler))
    else:
        scheduler = FIFOScheduler()
    if cfg.tracking.enabled:
        params = {"space": space.name, "profile": plan.profile, "num_samples": plan.num_samples,
                  "max_concurrent": plan.max_concurrent, "seed": cfg.seed, "scheduler": plan.scheduler}
        artifacts = {"search.yaml": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                     "space.yaml": Path(space.source).read_text()}
        callbacks.insert(0, MLflowTracker(cfg.tracking.uri, plan.name, parent_tags(plan, search_id), params,
                                          artifacts, searched=[p.name for p in space.params]))
    run_config = tune.RunConfig(
        name=plan.name, storage_path=cfg.storage, callbacks=callbacks, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=tune.FailureConfig(max_failures=cfg.trial.max_failures))
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.num_samples,
                                  max_concurrent_trials=plan.max_concurrent,
                                  reuse_actors=bool(cfg.trial.reuse_workers))
    param_space = {"train": plan.base_train,
                   "trial": {"checkpoint_every": cfg.trial.checkpoint_every, "metric": space.metric}}
    return {"trainable": trainable(plan), "run_config": run_config, "tune_config": tune_config,
            "param_space": param_space}


def trainable(plan: SearchPlan) -> Any:
    """The trial function with one trial's resources attached (and, on a cluster, the driver's files)."""
    trains = [{**plan.base_train, "dataset": dataset, "data_dir": data_dir}
              for dataset in sorted(plan.space.field_values("dataset"))
              for data_dir in sorted(plan.space.field_values("data_dir"))]
    teachers = [checkpoint_path(name, plan.base_train) for name in plan.teachers]
    return driver.trial_function(train_trial, plan.cfg, trains, teachers)


def parent_tags(plan: SearchPlan, search_id: str | None) -> dict[str, str]:
    """Tags of the search's parent run: what it searches, where its state lives, which code ran it."""
    space = plan.space
    return {"rslad.space": space.name, "rslad.profile": plan.profile, METRIC_TAG: space.metric,
            "rslad.mode": space.mode, STORAGE: plan.experiment_path,
            **({SEARCH_ID: search_id} if search_id else {}), **git_state(REPO), **library_versions()}


def run_search(plan: SearchPlan):
    """Provide the teachers, start Ray, then run (or resume) the preflighted search; returns Tune's ResultGrid."""
    from ray import tune  # heavy: only once the search runs

    teacher_weights.provide(plan.teachers, plan.base_train, plan.cfg)  # fetches or trains what the preflight found missing, and loads each one
    check_gpu_packing(plan)  # needs the teachers' weights; before Ray starts
    driver.start_ray(plan.cfg, shared={"storage": plan.cfg.storage,
                                       "train.rsl_cache_dir": plan.base_train["rsl_cache_dir"]})
    if plan.cfg.resume:
        # Tune restores the searcher, scheduler and callbacks pickled in storage; only the trainable is
        # given anew, and the restored MLflow tracker writes where this command says.
        search_id = plan.saved["search_id"]  # the preflight refused a resume without a saved description
        use_current_command(plan.name, plan.cfg.tracking.uri, parent_tags(plan, search_id))
        log.info("resuming %s from %s", plan.name, plan.experiment_path)
        tuner = tune.Tuner.restore(plan.experiment_path, trainable=trainable(plan),
                                   resume_unfinished=True, resume_errored=True)
    else:
        new = new_record(plan)
        make_private(plan.cfg.storage)
        make_private(plan.experiment_path)
        write_record(plan.experiment_path, new)
        objects = tune_objects(plan, new["search_id"])
        tuner = tune.Tuner(objects["trainable"], param_space=objects["param_space"],
                           tune_config=objects["tune_config"], run_config=objects["run_config"])
    with driver.tune_running():
        return tuner.fit()


def check_gpu_packing(plan: SearchPlan) -> None:
    """A fractional trial.gpus must fit: probe each memory-relevant configuration (a subprocess, so this driver holds no
    CUDA context) and refuse a packing whose estimated total exceeds the GPU's memory, with a one-line error."""
    gpus = driver.trial_resources(plan.cfg)["gpu"]
    if plan.cfg.ray.address or not 0 < gpus < 1:
        return  # whole GPUs need no packing check; a cluster's GPUs are probed nowhere from here
    searched = {k: sorted(plan.space.field_values(k), key=str) for k in MEMORY_KEYS}
    variants = memory_variants(plan.base_train, searched)
    error, results = check_packing(variants, gpus)
    for v, r in zip(variants, results):
        if r and not r.get("oom"):
            log.info("GPU memory per trial, student=%s teacher=%s method=%s batch_size=%d: ~%.1f GiB of %.1f GiB (%s)",
                     v["student"], v["teacher"], v["method"], v["batch_size"], r["estimate_gib"], r["gpu_total_gib"],
                     r["gpu_name"])
    if error:
        raise SearchInputError(error)


def summary_table(results, metric: str, top_k: int, name: str = "<this search>") -> str:
    """The top trials as a fixed-width table: searched params, best validation accuracies with the 95 % Wilson
    interval of the metric (from the number of validation images), epochs run; then what that number resolves."""
    rows = []
    for result in results:
        if result.metrics is None or f"best_{metric}" not in result.metrics:
            continue
        history = result.metrics_dataframe
        best_row = history.loc[history[metric].idxmax()] if history is not None and len(history) else result.metrics
        params = searched_values(result.config)
        rows.append({
            "trial": str(result.metrics.get("trial_id", "?")),
            "params": ", ".join(f"{k}={short_value(v)}" for k, v in sorted(params.items())) or "-",
            metric: float(best_row[metric]),
            "interval": trial_interval(result.config, {f"best_{metric}": best_row[metric]}, metric),
            "val_clean_acc": float(best_row["val_clean_acc"]),
            "best_epoch": int(best_row["epoch"]),
            "epochs_run": int(result.metrics.get("epoch", 0)),
            "of": int(result.config["train"]["epochs"]),
        })
    rows.sort(key=lambda r: r[metric], reverse=True)
    header = (f"{'rank':>4}  {'trial':<8}  {'params':<40} {metric:>12} {'95 % interval':>16} {'val_clean_acc':>13} "
              f"{'best_epoch':>10} {'epochs_run':>10}")
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows[:top_k], 1):
        lines.append(f"{i:>4}  {r['trial']:<8}  {r['params'][:40]:<40} {r[metric]:>12.4f} "
                     f"{interval_text(r['interval'], 3, scale=1):>16} {r['val_clean_acc']:>13.4f} "
                     f"{r['best_epoch']:>10} {str(r['epochs_run']) + '/' + str(r['of']):>10}")
    n_val = next((r["interval"].n for r in rows if r["interval"] is not None), None)
    if n_val:
        lines += textwrap.wrap(f"95 % interval: Wilson, from one run's {n_val} validation images; "
                               f"{resolution_sentence(n_val, 'the validation split', seeds=1)}. Error bars over seeds: "
                               f"python -m search.replicate name={name}", len(header), break_on_hyphens=False)
    return "\n".join(lines)


def saved_counts(experiment_path: str) -> dict[str, int]:
    """Trials by how they stand in the search's saved state (what a resume continues from).

    After a stop signal Tune's in-memory trials all read TERMINATED; its saved state does not.
    """
    from ray.tune import ExperimentAnalysis  # heavy: only once the search ran

    counts = {"finished": 0, "stopped_early": 0, "failed": 0, "unfinished": 0}
    for trial in ExperimentAnalysis(experiment_path).trials:
        state = trial_state(trial)
        counts[state if state in counts else "unfinished"] += 1
    return counts


def resume_command(argv: list[str], name: str) -> str:
    """The command that continues this search."""
    kept = [a for a in argv if not a.startswith(("name=", "resume=", "dry_run="))]
    return f"python -m search.run {' '.join(kept)} name={name} resume=true".replace("  ", " ")


def start_command(argv: list[str]) -> str:
    """The command a dry run stands for, without dry_run."""
    return " ".join(["python -m search.run", *(a for a in argv if not a.startswith("dry_run="))])


def main(argv: list[str]) -> int:
    """Help, config, dry run, or plan + preflight + run + summary; exit 0, 1 (every trial failed), 2 (bad input),
    130/143 (interrupted)."""
    line = read_command_line(argv)
    if answer_help_or_cfg(line, "search.run"):
        return 0
    plan = plan_search(line.overrides)
    driver.quiet_libraries(plan.cfg.verbose)  # before MLflow is imported and anything starts (Ray, a study, a store)
    sources = preflight(plan)
    if plan.cfg.dry_run:
        if all(s == "file" for s in sources.values()):
            check_gpu_packing(plan)  # the probe needs the teachers' weights; otherwise it runs before the search
        print(describe(plan, sources), end="")
        print(f"start it: {start_command(line.overrides)}")
        return 0
    log.info("search %s: space=%s profile=%s, %d trials (%d at once), scheduler=%s, storage=%s",
             plan.name, plan.space.name, plan.profile, plan.num_samples, plan.max_concurrent,
             plan.scheduler, plan.experiment_path)
    results = run_search(plan)
    failed = [r for r in results if failed_reason(r)]
    stopped_by = driver.received()
    metric = plan.space.metric
    if stopped_by:
        counts = saved_counts(plan.experiment_path)
        print(f"\nsearch {plan.name} INTERRUPTED by {stopped_by}: "
              + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items())
              + f"; its state is saved in {plan.experiment_path}")
        print(f"top trials so far by {metric} (validation split)")
    else:
        print(f"\nsearch {plan.name}: top trials by {metric} (validation split)")
    print(summary_table(results, metric, plan.cfg.top_k, plan.name))
    if failed and not stopped_by:
        print(f"{len(failed)} trial(s) failed; see their MLflow runs (tag rslad.error)")
    print("\n" + "\n".join(browse_lines(plan.cfg, plan.name, plan.study_url)))
    print(f"{'continue it with' if stopped_by else 'resume'}: {resume_command(line.overrides, plan.name)}")
    if stopped_by:
        return driver.exit_code()
    return 1 if failed and len(failed) == len(results) else 0


if __name__ == "__main__":
    driver.install()
    sys.exit(run_cli(main))
