"""`python -m search.replicate name=<search> [replicate.top_k=3] [replicate.seeds=3] [key=value ...]`: the search's
finalists trained again with new seeds, so that its ranking comes with error bars.

A search ranks its trials on one run each, and the differences it ranks on are often smaller than the noise of one
run. This command takes the top_k trials of a finished search (by its metric, failed trials left out, ties by trial
id, as analysis.finalize ranks) and trains each configuration again with `replicate.seeds` new seeds, every replicate
to the end of its schedule (no early stopping), through the search's own machinery: the same trainable, per-epoch
checkpoints, the live console, and the MLflowTracker writing each replicate as a child run of the search's parent
run (tags rslad.replicate_of = the trial it replicates, rslad.replicate_seed = its train.seed).

Replicate i (1..seeds) of a trial adds i to its train.seed (initial weights, attack noise) and to its epoch order
seed (train.order_seed: the batches' order, crops and flips); train.data_seed, and with it the validation split and
train_subset, stays the search's, as do the test set and the teacher. The search's own run of a finalist is not a
replicate: it was chosen because it scored high, so its configuration's statistics use the replicates alone.

The replicates live in <storage>/<name>/replicates (a Tune experiment of their own, with the description
rslad-search.json). Running the same command again continues them where they stopped (resume=true says so
explicitly); another top_k or seeds is refused, naming what differs. Everything is checked before Ray starts: the
search exists, is trusted and finished, its tracking store and parent run are there, the finalists' data and
teachers load, one trial fits this machine; dry_run=true prints the plan and stops there. At the end the command
prints each configuration's replicates (mean, sd, n, 95 % t interval) beside the search's own run (with its Wilson
interval), and for the winner against each runner-up the difference with its interval, a paired t-test over the
shared seeds, and whether the two can be told apart; the parent run gets the same numbers as tags
(rslad.replicates.<trial>.best_<metric>, rslad.replicate_verdicts; analysis.finalize adds them as metrics).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.uncertainty import (
    REPLICATE_HEADERS,
    Configuration,
    label_of,
    pooled_seed_sd,
    replicate_rows,
    resolution_sentence,
    text_table,
    validation_images,
    verdict_lines,
)
from search import driver
from search.cli import answer_help_or_cfg, read_command_line, run_cli
from search.config import SearchConfig, SearchInputError, load_config
from search.console import LiveConsole
from search.plan import SearchPlan, plan_search
from search.run import CHECKPOINTS_KEPT
from search.storage import (
    check_creatable,
    check_name,
    check_trusted,
    make_private,
    read_record,
    record_differences,
    record_path,
    write_record,
)
from search.teacher_weights import load_teacher, missing_message
from search.tracking import (
    MLflowTracker,
    check_tracking_store,
    failed_reason,
    parent_run_id,
    searched_values,
    trial_state,
    use_current_command,
)
from trainables.config import TrainConfig
from trainables.data import check_cifar_files
from trainables.paths import is_uri, sqlite_file
from trainables.ray_adapter import train_trial
from trainables.schema import (
    FAILED,
    METRIC_TAG,
    REPLICATE_OF,
    REPLICATE_SEED,
    ROLE,
    SEARCH_ID,
    STORAGE,
)
from trainables.teachers import checkpoint_path

log = logging.getLogger("search")

COMMAND = "search.replicate"
FOLDER = "replicates"
"""The replicates' Tune experiment, inside the search's folder."""
RECORD_KIND = "replicates"
STATUS_TAG = "rslad.replicates"
VERDICTS_TAG = "rslad.replicate_verdicts"


@dataclass(frozen=True)
class Finalist:
    """One of the search's top trials: its rank, its Tune config (train, trial, searched values) and its score."""

    trial_id: str
    rank: int
    config: dict[str, Any]
    value: float

    @property
    def label(self) -> str:
        return label_of(searched_values(self.config), self.trial_id)


@dataclass
class ReplicatePlan:
    """Everything decided before Ray starts: the search's plan, its finalists, the seeds, what exists already."""

    search: SearchPlan
    finalists: list[Finalist]
    offsets: list[int]
    """Replicate i adds i to the finalist's train.seed and epoch order seed (1..replicate.seeds)."""
    existing: dict[str, Any] | None = None
    """The description of replicates started before (they continue), None for new ones."""
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Replicate label -> {'of': trial id, 'seed': train.seed, 'train': its train dict, 'params': searched values}."""
    cfg: SearchConfig = field(init=False)
    name: str = field(init=False)
    metric: str = field(init=False)
    """The search's config, name and metric."""
    path: str = field(init=False)
    """The replicates' Tune experiment folder, in the search's."""

    def __post_init__(self) -> None:
        self.cfg, self.name, self.metric = self.search.cfg, self.search.name, self.search.space.metric
        self.path = f"{self.search.experiment_path}/{FOLDER}"

    def settings(self) -> dict[str, Any]:
        """What a continued run must keep (compared with the saved description)."""
        cfg = self.cfg
        return {"replicate.top_k": cfg.replicate.top_k, "replicate.seeds": cfg.replicate.seeds,
                "finalists": [f.trial_id for f in self.finalists], "seeds": self.offsets,
                "trial.checkpoint_every": cfg.trial.checkpoint_every, "trial.max_failures": cfg.trial.max_failures,
                "tracking.enabled": cfg.tracking.enabled}

    def trial_epochs(self) -> int:
        return sum(int(s["train"]["epochs"]) for s in self.specs.values())


# --- the plan: the search, its finalists, the replicates -----------------------------------------------------
def plan_replicates(overrides: list[str]) -> ReplicatePlan:
    """The search's plan (composed with the space and profile it was started with) and its finalists; raises one-line
    errors. Reads the search's saved description and Tune state (after the trust check); writes nothing."""
    first = load_config(overrides)
    if not first.name:
        raise SearchInputError("name= is required: the search whose finalists to replicate (as search.run printed it)")
    check_name(first.name)
    where = f"{first.storage.rstrip('/')}/{first.name}"
    saved = read_record(where)
    if saved is None or "settings" not in saved:
        raise SearchInputError(f"there is no search named {first.name!r} at {where} (no {Path(record_path(where)).name}); "
                               "check name= and storage=")
    given = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    started = {"space": saved["settings"]["space"], "profile": saved["settings"]["profile"]}
    for key, value in started.items():
        if key in given and given[key] != value:
            raise SearchInputError(f"{key}={given[key]}: search {first.name!r} was started with {key}={value}; "
                                   f"leave {key} out (it is read from the search)")
    plan = plan_search([*(f"{k}={v}" for k, v in started.items() if k not in given), *overrides])
    check_trusted(plan.experiment_path)  # its Tune state is unpickled to read the trials
    rplan = ReplicatePlan(plan, finalists(plan), list(range(1, plan.cfg.replicate.seeds + 1)))
    rplan.specs = replicate_specs(rplan)
    return rplan


def finalists(plan: SearchPlan) -> list[Finalist]:
    """The search's replicate.top_k best trials by its metric; refuses a search with unfinished trials."""
    from ray.tune import ExperimentAnalysis  # heavy: only once a search is read

    metric, mode = f"best_{plan.space.metric}", plan.space.mode
    trials = ExperimentAnalysis(plan.experiment_path).trials
    unfinished = [t for t in trials if trial_state(t) in ("running", "pending")]
    if unfinished:
        raise SearchInputError(f"search {plan.name!r} has {len(unfinished)} unfinished trial(s), so its finalists may "
                               f"still change; finish it first: python -m search.run name={plan.name} resume=true "
                               "(with the keys it was started with)")
    scored = [t for t in trials if trial_state(t) != "failed" and t.last_result
              and not t.last_result.get(FAILED) and metric in t.last_result
              and math.isfinite(float(t.last_result[metric]))]
    if not scored:
        raise SearchInputError(f"search {plan.name!r} has no trial with {metric}: nothing to replicate")
    sign = -1 if mode == "max" else 1
    scored.sort(key=lambda t: (sign * float(t.last_result[metric]), t.trial_id))
    return [Finalist(t.trial_id, rank, dict(t.config), float(t.last_result[metric]))
            for rank, t in enumerate(scored[:plan.cfg.replicate.top_k], 1)]


def replicate_specs(rplan: ReplicatePlan) -> dict[str, dict[str, Any]]:
    """Every replicate, seed-major (all finalists' first seed, then the second, ...), so that an interrupted run has
    even counts and replicates of one seed share the soft-label cache (their batches are the same)."""
    specs = {}
    cache = rplan.search.base_train["rsl_cache_dir"]  # the search's cache folder, as this command sees it
    for offset in rplan.offsets:
        for f in rplan.finalists:
            train = TrainConfig.from_dict(f.config["train"])
            seed = train.seed + offset
            replica = train.replace(seed=seed, order_seed=train.epoch_order_seed + offset, rsl_cache_dir=cache)
            specs[f"{f.trial_id}-s{seed}"] = {"of": f.trial_id, "seed": seed, "train": replica.to_dict(),
                                              "params": searched_values(f.config)}
    return specs


# --- before Ray: every check, nothing written ----------------------------------------------------------------
def preflight_replicates(rplan: ReplicatePlan) -> None:
    """Resources, the replicates' folder, the tracking store and the search's parent run, the finalists' data and
    teachers, and whether replicates exist already (same settings: they continue)."""
    cfg = rplan.cfg
    driver.check_local_resources(cfg)
    if not is_uri(rplan.path):
        check_creatable(Path(rplan.path), f"storage={cfg.storage}")
    check_tracking(rplan)
    trains = [TrainConfig.from_dict(s["train"]) for s in rplan.specs.values()]
    for dataset, data_dir in sorted({(t.dataset, t.data_dir) for t in trains if t.dataset != "digits"}):
        check_cifar_files(dataset, data_dir)
    for name, path in sorted({(t.teacher, checkpoint_path(t.teacher, t.to_dict())) for t in trains if t.uses_teacher}):
        if not path.is_file():
            raise SearchInputError(missing_message(name, path))
        load_teacher(name, path)
    rplan.existing = check_existing(rplan)


def check_tracking(rplan: ReplicatePlan) -> None:
    """With tracking on: the store, the search's experiment (the same search id) and its parent run are there."""
    cfg = rplan.cfg
    if not cfg.tracking.enabled:
        return
    check_tracking_store(cfg)
    uri, name = cfg.tracking.uri, rplan.name
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise SearchInputError(f"tracking.uri={uri} does not exist: give the tracking.uri the search used "
                               "(or tracking.enabled=false)")
    from mlflow.tracking import (
        MlflowClient,  # heavy: only after the checks that need no store
    )

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    search_id = rplan.search.saved["search_id"]
    if exp is None or exp.tags.get(SEARCH_ID) not in (None, search_id):
        raise SearchInputError(f"the tracking store {uri} has no experiment of search {name!r} (search id "
                               f"{search_id}); give the tracking.uri the search used")
    if parent_run_id(client, exp.experiment_id, name) is None:
        raise SearchInputError(f"the MLflow experiment {name!r} in {uri} has no parent run of the search "
                               f"(tag {ROLE}=search)")


def check_existing(rplan: ReplicatePlan) -> dict[str, Any] | None:
    """Replicates started before: continued when their settings are these (returns their description), refused
    otherwise; None when there are none (resume=true then is an error)."""
    from ray import tune  # heavy: only once the plan is made

    saved = read_record(rplan.path)
    if tune.Tuner.can_restore(rplan.path):
        check_trusted(rplan.path)
        changed = record_differences(saved["settings"], rplan.settings()) if saved else ["its description (missing)"]
        if changed:
            raise SearchInputError(
                f"replicates of {rplan.name!r} were started at {rplan.path} with other settings: {', '.join(changed)}; "
                "run them with those values to continue, or move that folder away to start others")
        return saved
    if saved is not None:
        raise SearchInputError(f"replicates of {rplan.name!r} were started at {rplan.path} but stopped before Tune "
                               "saved anything; remove that folder to start them again")
    if rplan.cfg.resume:
        raise SearchInputError(f"resume=true but no replicates of {rplan.name!r} were started at {rplan.path}; "
                               "leave resume out to start them")
    return None


# --- the dry run ---------------------------------------------------------------------------------------------
def describe(rplan: ReplicatePlan) -> str:
    """What the command would do, as dry_run=true prints it."""
    cfg = rplan.cfg
    n_val = validation_images(rplan.finalists[0].config["train"])
    need = driver.trial_resources(cfg)
    seeds = ", ".join(f"+{o}" for o in rplan.offsets)
    items = [("finalists", f"top {len(rplan.finalists)} by best_{rplan.metric} ({rplan.search.space.mode}):"),
             *(("", f"{f.rank}. {f.label}: {f.value:.4f}") for f in rplan.finalists),
             ("seeds", (f"{len(rplan.offsets)} per finalist: train.seed and the epoch order seed {seeds} (the "
                        "validation split stays the search's)")),
             ("replicates", (f"{len(rplan.specs)} runs, {rplan.trial_epochs()} trial-epochs (no early stopping), "
                             f"{rplan.search.max_concurrent} at once; {need['cpu']:g} CPU, {need['gpu']:g} GPU per "
                             "run")),
             ("storage", rplan.path + ("; continues the replicates saved there" if rplan.existing else "")),
             ("tracking", f"{cfg.tracking.uri} (child runs of the parent run of '{rplan.name}')"
                          if cfg.tracking.enabled else "off (tracking.enabled=false)")]
    if n_val:
        items.append(("resolution", resolution_sentence(n_val, "the validation split", len(rplan.offsets))))
    lines = [f"replicates of search {rplan.name}: the plan (dry run: nothing was started or written)"]
    lines += [_wrapped(text, f"  {label:<14}") for label, text in items]
    return "\n".join(lines) + "\n"


def _wrapped(text: str, first: str, width: int = 100) -> str:
    """`text` wrapped to `width`, after `first` and under it."""
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=" " * len(first),
                         break_on_hyphens=False, break_long_words=False)


# --- Tune ----------------------------------------------------------------------------------------------------
def _pick(table: dict[str, dict[str, Any]], key: str, config: dict[str, Any]) -> Any:
    """A replicate's `key` (its train dict or a searched value) by its label; a module-level function, so the search
    space pickles into the replicates' saved state."""
    entry = table[config["replicate"]]
    return entry["train"] if key == "train" else entry["params"].get(key)


def param_space(rplan: ReplicatePlan) -> dict[str, Any]:
    """One grid value per replicate; its train dict and searched values follow from its label."""
    from ray import tune  # heavy: only once the replicates run

    table = rplan.specs
    searched = sorted({k for s in table.values() for k in s["params"]})
    return {"replicate": tune.grid_search(list(table)),
            "train": tune.sample_from(functools.partial(_pick, table, "train")),
            **{k: tune.sample_from(functools.partial(_pick, table, k)) for k in searched},
            "trial": {"checkpoint_every": rplan.cfg.trial.checkpoint_every, "metric": rplan.metric}}


class ReplicateTracker(MLflowTracker):
    """The search's tracker for its replicates: each a child run of the search's parent run, tagged with the trial it
    replicates and its seed; the parent is left as the search ended it (not reopened, its winner and trial counts
    untouched) and gets the replicates' summaries as tags (rslad.replicates.<trial>.best_<metric>), the verdicts
    (rslad.replicate_verdicts) and how the replicates stand (rslad.replicates).

    It goes through MLflowTracker's operations (so an unreachable server queues them as it does for the search) and
    changes three of them: the parent's start, finish and interruption are the search's, not sent here."""

    run_group = "replicates"  # the search's tracker and this one never close each other's RUNNING runs as orphans

    def __init__(self, tracking_uri: str, experiment: str, metric: str, storage: str, finalists: list[Finalist],
                 specs: dict[str, dict[str, Any]]) -> None:
        super().__init__(tracking_uri, experiment, {METRIC_TAG: metric, STORAGE: storage}, {}, {})
        self.finalists = finalists
        self.tags = {label: {REPLICATE_OF: s["of"], REPLICATE_SEED: str(s["seed"])} for label, s in specs.items()}

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "finalists": self.finalists, "tags": self.tags}

    def _emit(self, ops: list[dict]) -> None:
        super()._emit([op for op in ops if not _about_the_search(op)])

    def _open(self, trial: Any) -> list[dict]:
        ops = super()._open(trial)
        return [*ops, {"op": "tags", "trial": trial.trial_id, "tags": self.tags[trial.config["replicate"]]}] if ops \
            else ops

    def _finish_parent(self, trials: list, status: str) -> None:
        metric = self.parent_tags[METRIC_TAG]
        configs = configurations(self.finalists, trials, metric)
        tags = {STATUS_TAG: "finished" if status == "FINISHED" else f"interrupted by {driver.received()}",
                VERDICTS_TAG: "\n".join(verdict_lines(configs))[:4000] or "-"}
        for c in configs:
            s = c.summary
            if s is not None:
                tags[f"{STATUS_TAG}.{c.trial_id}.best_{metric}"] = (
                    f"mean {s.mean:.4f}, sd {s.sd:.4f}, n {s.n}, 95 % t interval [{s.low:.4f}, {s.high:.4f}]")
        super()._emit([{"op": "tags", "trial": None, "tags": tags}])


def _about_the_search(op: dict) -> bool:
    """An operation on the search's parent run that only the search sends: its start (which reopens the parent), its
    finish (winner, trial counts, status) and its interruption."""
    return op["op"] in ("start", "finish") or (op["op"] == "tags" and op.get("trial") is None
                                                and "rslad.interrupted" in op["tags"])


def configurations(finals: list[Finalist], trials: list, metric: str) -> list[Configuration]:
    """Each finalist's configuration with its replicates' best_<metric> by seed (finished replicates only)."""
    by_trial = {f.trial_id: Configuration(f.trial_id, f.label, f.rank, f.value,
                                          validation_images(f.config["train"])) for f in finals}
    for t in trials:
        last = t.last_result or {}
        of = str(t.config.get("replicate", "")).rsplit("-s", 1)[0]
        if of in by_trial and trial_state(t) == "finished" and f"best_{metric}" in last:
            by_trial[of].values[int(t.config["train"]["seed"])] = float(last[f"best_{metric}"])
    return list(by_trial.values())


def trainable(rplan: ReplicatePlan) -> Any:
    """The search's trial function with one trial's resources (on a cluster, with the files the replicates read)."""
    trains = [s["train"] for s in rplan.specs.values()]
    teachers = sorted({checkpoint_path(t["teacher"], t) for t in trains if TrainConfig.from_dict(t).uses_teacher})
    return driver.trial_function(train_trial, rplan.cfg, trains, teachers)


def tuner(rplan: ReplicatePlan) -> Any:
    """A new Tuner for the replicates, or the one saved in their folder (continued)."""
    from ray import tune  # heavy: only once the replicates run
    from ray.tune.schedulers import FIFOScheduler

    cfg = rplan.cfg
    if rplan.existing is not None:
        if cfg.tracking.enabled:
            use_current_command(rplan.name, cfg.tracking.uri, {METRIC_TAG: rplan.metric,
                                                                 STORAGE: rplan.search.experiment_path})
        log.info("continuing the replicates of %s from %s", rplan.name, rplan.path)
        # Tune does not save the param space, and the replicates not yet started are placeholders into it.
        return tune.Tuner.restore(rplan.path, trainable=trainable(rplan), param_space=param_space(rplan),
                                  resume_unfinished=True, resume_errored=True)
    callbacks: list = [LiveConsole(f"{rplan.name} {FOLDER}", rplan.metric, len(rplan.specs),
                                   planned_trial_epochs=rplan.trial_epochs())]
    if cfg.tracking.enabled:
        callbacks.insert(0, ReplicateTracker(cfg.tracking.uri, rplan.name, rplan.metric, rplan.search.experiment_path,
                                             rplan.finalists, rplan.specs))
    run_config = tune.RunConfig(
        name=FOLDER, storage_path=rplan.search.experiment_path, callbacks=callbacks, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=tune.FailureConfig(max_failures=cfg.trial.max_failures))
    tune_config = tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                  max_concurrent_trials=rplan.search.max_concurrent,
                                  reuse_actors=bool(cfg.trial.reuse_workers))
    return tune.Tuner(trainable(rplan), param_space=param_space(rplan), tune_config=tune_config,
                      run_config=run_config)


def run_replicates(rplan: ReplicatePlan) -> Any:
    """Start Ray and train (or continue) the replicates; returns Tune's ResultGrid."""
    driver.start_ray(rplan.cfg, shared={"storage": rplan.cfg.storage,
                                        "train.rsl_cache_dir": rplan.search.base_train["rsl_cache_dir"]})
    if rplan.existing is None:
        make_private(rplan.path)
        write_record(rplan.path, {"kind": RECORD_KIND, "search_id": rplan.search.saved["search_id"],
                                  "name": rplan.name, "settings": rplan.settings()})
    objects = tuner(rplan)
    with driver.tune_running():
        return objects.fit()


# --- what the person sees at the end -------------------------------------------------------------------------
def report_lines(rplan: ReplicatePlan, configs: list[Configuration]) -> list[str]:
    """The replicates' table (in %), the verdicts and what the validation split can resolve."""
    metric = f"best_{rplan.metric}"
    n_val = validation_images(rplan.finalists[0].config["train"])
    lines = [_wrapped(f"replicates of search {rplan.name}: {metric} (%) on {n_val or '?'} validation images; the "
                      "search's own run with its 95 % Wilson interval, then the replicates' n, mean, sd and 95 % t "
                      "interval (the search's run is left out of them: it was selected for scoring high)", ""),
             text_table(REPLICATE_HEADERS, replicate_rows(configs), right=(0, 3, 4, 5)), ""]
    verdicts = verdict_lines(configs)
    if verdicts:
        lines += [f"winner against each runner-up ({metric}, replicates only):",
                  *(_wrapped(v, "  - ") for v in verdicts), ""]
    if n_val:
        lines.append(_wrapped(resolution_sentence(n_val, "the validation split", len(rplan.offsets),
                                                  pooled_seed_sd(configs)), "resolution: "))
    return lines


def main(argv: list[str]) -> int:
    """Help, config, dry run, or plan + preflight + replicates + summary; exit 0, 1 (every replicate failed), 2 (bad
    input), 130/143 (interrupted)."""
    line = read_command_line(argv)
    if answer_help_or_cfg(line, COMMAND):
        return 0
    rplan = plan_replicates(line.overrides)
    driver.quiet_libraries(rplan.cfg.verbose)
    preflight_replicates(rplan)
    if rplan.cfg.dry_run:
        print(describe(rplan), end="")
        print("start it: " + " ".join(["python -m search.replicate",
                                       *(a for a in line.overrides if not a.startswith("dry_run="))]))
        return 0
    log.info("replicates of %s: %d finalists x %d seeds = %d runs (%d trial-epochs), %s", rplan.name,
             len(rplan.finalists), len(rplan.offsets), len(rplan.specs), rplan.trial_epochs(), rplan.path)
    start = time.monotonic()
    results = run_replicates(rplan)
    seconds = time.monotonic() - start
    stopped_by = driver.received()
    trials = [_ResultTrial(r) for r in results]
    configs = configurations(rplan.finalists, trials, rplan.metric)
    failed = [r for r in results if failed_reason(r)]
    done = sum(t.status == "TERMINATED" and not failed_reason(t.result) for t in trials)
    head = f"INTERRUPTED by {stopped_by}: " if stopped_by else ""
    print(f"\n{head}{done} of {len(rplan.specs)} replicates finished; {len(failed)} failed; "
          f"this command ran {_clock(seconds)} (wall time)")
    print("\n".join(report_lines(rplan, configs)))
    again = " ".join(["python -m search.replicate", *(a for a in line.overrides if not a.startswith("resume="))])
    finalize = f"python -m analysis.finalize name={rplan.name} top_k={len(rplan.finalists)}"
    print(f"continue it with: {again}" if stopped_by
          else f"evaluate them: {finalize}   (the finalists' replicates are evaluated with them)")
    if stopped_by:
        return driver.exit_code()
    return 1 if failed and len(failed) == len(results) else 0


@dataclass
class _ResultTrial:
    """A Tune Result seen as the trial it ended (what configurations() and the intervals read)."""

    result: Any

    @property
    def config(self) -> dict[str, Any]:
        return self.result.config

    @property
    def last_result(self) -> dict[str, Any]:
        return self.result.metrics or {}

    @property
    def status(self) -> str:
        epochs = int(self.config["train"]["epochs"])
        return "TERMINATED" if int(self.last_result.get("epoch", 0)) >= epochs else "RUNNING"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


if __name__ == "__main__":
    driver.install()
    sys.exit(run_cli(main))
