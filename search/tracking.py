"""MLflow tracking from the driver: one parent run per search, one child run per Ray trial.

Ray's stock MLflowLoggerCallback opens a new run for every trial it sees after a restore
(duplicates, orphans left RUNNING) and cannot tell an ASHA stop from a finished trial. This
callback finds its runs again by tag (`rslad.search`, `ray.trial_id`) so a resumed search
reattaches to them, and records each trial's real status. All writes happen in the driver
process: SQLite takes one writer at a time.

Across faults: a stop signal leaves the parent and the unfinished trials' runs KILLED (reopened by
the resume); a trial restored from an older checkpoint does not log the epochs it repeats; a resumed
search writes to the tracking URI of the command that resumes it; a SQLite store keeps artifacts in
`mlartifacts/` beside the database file, not in the working directory.

What the UI shows (MLflow 3): the experiment is tagged as model development and carries a stored
runs view (search.mlflow_view: searched params, best_val_pgd_acc, status columns, every run
listed best first); each trial's run is named after its searched values and trial id,
with how it ended appended (`alpha_ratio=5 · 75cf6ae3 · stopped 2/8`); the parent logs the
same metric names as its trials (the winner's best_val_pgd_acc, best_val_clean_acc, best_epoch)
and the winner's searched values as `winner.<param>` tags, which a resume may update (params
could not change once logged).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from search import interrupt
from search.mlflow_view import experiment_tags, runs_view
from trainables.paths import sqlite_file
from trainables.ray_adapter import FAILED, RESTORE_WARNING

log = logging.getLogger(__name__)

# What the trainable reports that belongs in MLflow (Ray adds timestamps, pids, config/*...).
METRIC_KEYS = ("train_loss", "lr", "val_clean_acc", "val_pgd_acc", "best_val_pgd_acc", "best_val_clean_acc", "best_epoch",
               "schedule_pct", "epoch_time_s", "images_per_s", "rsl_cache_computed", "rsl_cache_reused",
               "gpu_mem_peak_gb", "gpu_mem_reserved_gb", "gpu_util_pct")
ROLE, SEARCH, TRIAL_ID, STATUS = "rslad.role", "rslad.search", "ray.trial_id", "rslad.status"
SEARCH_ID, STORAGE, EPOCHS_RUN = "rslad.search_id", "rslad.storage", "rslad.epochs_run"
ARTIFACTS_DIR = "mlartifacts"
WINNER_PREFIX = "winner."
NAME_SEP = " · "
MAX_RUN_NAME = 250  # MLflow's limit on run names
ENDINGS = {"finished": "finished", "stopped_early": "stopped", "failed": "failed", "interrupted": "interrupted"}

# The tracking URI and parent tags of the command now running, by experiment. Tune unpickles callbacks
# from the search's storage on resume; the restored tracker must write where the CURRENT command says.
_CURRENT: dict[str, tuple[str, dict[str, str]]] = {}


def use_current_command(experiment: str, uri: str, parent_tags: dict[str, str]) -> None:
    """Make every tracker of `experiment` unpickled from now on write to `uri` with these parent tags."""
    _CURRENT[experiment] = (uri, dict(parent_tags))


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a sqlite:/// store: <db folder>/mlartifacts/<experiment> (MLflow's default is the process's cwd)."""
    db = sqlite_file(tracking_uri)
    return None if db is None else (db.parent / ARTIFACTS_DIR / experiment).as_uri()


def get_or_create_experiment(client: Any, name: str, tracking_uri: str, tags: dict[str, str] | None = None) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store, `tags` set) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(tracking_uri, name), tags=tags)


def git_state(repo: Path) -> dict[str, str]:
    """git revision and dirty flag of `repo` ('unknown' outside a checkout, e.g. in a Ray job's working dir)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return {"git.revision": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {"git.revision": "unknown", "git.dirty": "unknown"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "ray", "optuna", "mlflow", "pyautoattack", "hydra-core"):
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"version.{pkg}"] = "missing"
    return out


def failed_reason(result: Any) -> str | None:
    """Why a trial failed (Tune's error, or the trainable's flag for errors a retry would repeat), else None."""
    if result.error:
        return str(result.error).strip().splitlines()[-1] if str(result.error).strip() else "error"
    return (result.metrics or {}).get(FAILED)


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """MLflow params of a trial: every TrainConfig field by name, searched params as search.<name>."""
    params = {k: str(v) for k, v in config["train"].items()}
    params.update({f"search.{k}": str(v) for k, v in searched_values(config).items()})
    return params


def searched_values(config: dict[str, Any]) -> dict[str, Any]:
    """The searched params of a trial's config (everything but the train and trial blocks)."""
    return {k: v for k, v in config.items() if k not in ("train", "trial")}


def short_value(value: Any) -> str:
    """A param value as the console and run names show it (4 significant digits for floats)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_name(trial: Any, status: str | None = None) -> str:
    """'alpha_ratio=5 · 75cf6ae3', with how the trial ended appended ('· stopped 2/8', '· failed')."""
    params = " ".join(f"{k}={short_value(v)}" for k, v in sorted(searched_values(trial.config).items()))
    name = f"{params}{NAME_SEP}{trial.trial_id}" if params else f"trial{NAME_SEP}{trial.trial_id}"
    if status in ENDINGS:
        ending = ENDINGS[status]
        if status == "stopped_early":
            ending += f" {int((trial.last_result or {}).get('epoch', 0))}/{int(trial.config['train']['epochs'])}"
        suffix = f"{NAME_SEP}{ending}"
        name = name[:MAX_RUN_NAME - len(suffix)] + suffix
    return name[:MAX_RUN_NAME]


def trial_status(trial: Any) -> str:
    """failed (flagged by the trainable), finished (whole schedule) or stopped_early (cut by the scheduler)."""
    last = trial.last_result or {}
    if last.get(FAILED):
        return "failed"
    done = int(last.get("epoch", 0))
    return "finished" if done >= int(trial.config["train"]["epochs"]) else "stopped_early"


def trial_state(trial: Any) -> str:
    """A Tune trial's state in the search's words: running, pending, failed, finished or stopped_early."""
    status = str(trial.status)
    if status == "TERMINATED":
        return trial_status(trial)
    return {"RUNNING": "running", "ERROR": "failed"}.get(status, "pending")  # PENDING, PAUSED


class MLflowTracker(tune.Callback):
    """A Tune callback that records the search in MLflow, idempotently across restores."""

    def __init__(self, tracking_uri: str, experiment: str, parent_tags: dict[str, str],
                 parent_params: dict[str, str], artifacts: dict[str, str], searched: list[str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.searched = list(searched or [])  # the space's param names: the runs view's columns
        self.experiment = experiment
        self.parent_tags = parent_tags
        self.parent_params = parent_params
        self.artifacts = artifacts  # artifact file name -> text (resolved config, space YAML)
        self._client = None
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._ended: set[str] = set()  # trials that ended before this session (restored) or through a callback in it
        self._started = False

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment state; the client and caches are rebuilt.
        return {**self.__dict__, "_client": None, "_runs": {}, "_last_step": {}, "_ended": set(), "_started": False,
                "parent_id": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_last_step": {}, "_ended": set(), "_started": False, **state})
        # A resume writes where the current command says, not where the pickled search once wrote.
        if self.experiment in _CURRENT:
            uri, tags = _CURRENT[self.experiment]
            self.tracking_uri = uri
            self.parent_tags = {**self.parent_tags, **tags}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # --- parent --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Find or create the experiment and its parent run (reopened on resume)."""
        self.parent_id = ensure_parent_run(self.client, self.experiment, self.tracking_uri, self.parent_tags,
                                           self.parent_params, self.artifacts, self.searched)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._started:  # the first step: what a resume restored as already ended
            self._started = True
            self._ended |= {t.trial_id for t in trials if str(t.status) in ("TERMINATED", "ERROR")}

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close the parent run: FINISHED with the best trial's numbers, or KILLED when the driver was stopped."""
        stopped_by = interrupt.received()
        self._close_children(trials, stopped_by)
        if stopped_by:
            self.client.set_tag(self.parent_id, "rslad.interrupted", stopped_by)
        self._finish_parent(trials, "KILLED" if stopped_by else "FINISHED")

    def _close_children(self, trials: list, stopped_by: str | None) -> None:
        """No child run stays RUNNING: ended trials (also those a resume restored as ended) say how they
        ended; trials still running when the driver was stopped are KILLED, and reopened on resume.

        After a stop signal Tune marks the trials it stops TERMINATED without any callback (its saved
        state keeps them unfinished): only trials that ended through a callback count as ended then.
        """
        by_trial = {t.trial_id: t for t in trials}
        ended = self._ended
        exp = self.client.get_experiment_by_name(self.experiment)
        running = self.client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`{ROLE}` = 'trial' and tags.`{SEARCH}` = '{self.experiment}' and attributes.status = 'RUNNING'"))
        for run in running:
            trial = by_trial.get(run.data.tags.get(TRIAL_ID, ""))
            if trial is None:
                continue
            self._runs[trial.trial_id] = run.info.run_id
            if stopped_by and trial.trial_id not in ended:
                self.client.set_tag(run.info.run_id, STATUS, "interrupted")
                self.client.update_run(run.info.run_id, name=run_name(trial, "interrupted"))
                self.client.set_terminated(run.info.run_id, "KILLED")
            elif str(trial.status) == "ERROR":
                self.on_trial_error(0, trials, trial)
            elif str(trial.status) == "TERMINATED":
                self.on_trial_complete(0, trials, trial)

    def _finish_parent(self, trials: list, status: str) -> None:
        """The winner's numbers under the trials' own metric names, its searched values as tags, the counts."""
        from mlflow.entities import Metric, RunTag

        metric = self.parent_tags.get("rslad.metric", "val_pgd_acc")
        scored = [t for t in trials if t.last_result and f"best_{metric}" in t.last_result
                  and not t.last_result.get(FAILED)]
        if scored:
            best = max(scored, key=lambda t: t.last_result[f"best_{metric}"])
            now = int(time.time() * 1000)
            # best_val_clean_acc is the clean accuracy at the winner's best epoch, not its last one.
            numbers = {k: best.last_result[k] for k in (f"best_{metric}", "best_val_clean_acc", "best_epoch")
                       if k in best.last_result}
            values = searched_values(best.config)
            tags = [RunTag("rslad.best_trial", best.trial_id)] + [
                RunTag(f"{WINNER_PREFIX}{k}", str(v)) for k, v in values.items()]
            self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
                                  tags=tags)
            # A resumed search's new winner may lack a conditional param the old one had.
            old = self.client.get_run(self.parent_id).data.tags
            for key in (f"{WINNER_PREFIX}{k}" for k in self.searched if k not in values):
                if key in old:
                    self.client.delete_tag(self.parent_id, key)
        counts: dict[str, int] = {}
        for t in trials:
            state = trial_state(t)
            counts[state] = counts.get(state, 0) + 1
        self.client.set_tag(self.parent_id, "rslad.trial_states", str(counts))
        # Teacher epochs computed vs read from the soft-label cache, over the whole search.
        for key in ("rsl_cache_computed", "rsl_cache_reused"):
            values = [t.last_result[key] for t in trials if t.last_result and key in t.last_result]
            if values:
                self.client.log_metric(self.parent_id, key, float(sum(values)))  # summed over the trials
        self.client.set_tag(self.parent_id, STATUS, "interrupted" if status == "KILLED" else "finished")
        self.client.set_terminated(self.parent_id, status)

    # --- children ------------------------------------------------------------------------
    def _find_run(self, trial: Any) -> Any:
        exp = self.client.get_experiment_by_name(self.experiment)
        found = self.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TRIAL_ID}` = '{trial.trial_id}' and tags.`{SEARCH}` = '{self.experiment}'",
            max_results=1)
        return found[0] if found else None

    def run_id(self, trial: Any) -> str:
        """The trial's child run: cached, else found by tag (and reopened), else created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self._find_run(trial)
        if found is not None:
            run_id = found.info.run_id
            self.client.update_run(run_id, status="RUNNING", name=run_name(trial))
            # Epochs a resumed trial repeats (from an older checkpoint) are not logged twice.
            self._last_step[trial.trial_id] = int(found.data.tags.get(EPOCHS_RUN, 0))
        else:
            run = self.client.create_run(
                self.client.get_run(self.parent_id).info.experiment_id, run_name=run_name(trial),
                tags={"mlflow.parentRunId": self.parent_id, ROLE: "trial", SEARCH: self.experiment,
                      TRIAL_ID: trial.trial_id, STATUS: "running"})
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in trial_params(trial.config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), STATUS, "running")

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), STATUS, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        if result.get(RESTORE_WARNING):
            self.client.set_tag(run_id, "rslad.restore_warning", str(result[RESTORE_WARNING])[:4000])
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if result.get(FAILED) or step <= self._last_step.get(trial.trial_id, 0):
            return  # the failure marker carries no epoch of its own; a repeated epoch is already logged
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in METRIC_KEYS if k in result]
        self.client.log_batch(run_id, metrics=metrics)
        self.client.set_tag(run_id, EPOCHS_RUN, str(step))
        self._last_step[trial.trial_id] = step

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.client.set_tag(self.run_id(trial), "rslad.checkpoint_dir", checkpoint.path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        status = trial_status(trial)
        self.client.set_tag(run_id, STATUS, status)
        if status == "failed":
            self.client.set_tag(run_id, "rslad.error", str(trial.last_result[FAILED])[:4000])
        self.client.update_run(run_id, name=run_name(trial, status))
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS, "failed")
        self.client.set_tag(run_id, "rslad.error", error_summary(trial))
        self.client.update_run(run_id, name=run_name(trial, "failed"))
        self.client.set_terminated(run_id, "FAILED")


def error_summary(trial: Any) -> str:
    """The last line of the trial's error file (the exception), for a tag."""
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1][:4000] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error (no error file)"


def ensure_parent_run(client: Any, experiment: str, tracking_uri: str, tags: dict[str, str],
                      params: dict[str, str], artifacts: dict[str, str], searched: list[str] = ()) -> str:
    """The search's parent run (reopened when it exists: resume, else created with params and artifacts), and the
    experiment tags that make MLflow's UI open the search as model development on its runs view."""
    exp_tags = {k: tags[k] for k in (SEARCH_ID, STORAGE) if k in tags}
    exp_id = get_or_create_experiment(client, experiment, tracking_uri, exp_tags)
    run_id = _parent_run(client, exp_id, experiment, tags, exp_tags, params, artifacts)
    view = runs_view(searched, tags.get("rslad.metric", "val_pgd_acc"))
    for key, value in experiment_tags(view).items():
        client.set_experiment_tag(exp_id, key, value)
    return run_id


def _parent_run(client: Any, exp_id: str, experiment: str, tags: dict[str, str], exp_tags: dict[str, str],
                params: dict[str, str], artifacts: dict[str, str]) -> str:
    found = client.search_runs([exp_id], filter_string=f"tags.`{ROLE}` = 'search' and tags.`{SEARCH}` = '{experiment}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "rslad.resumed", "true")
        client.set_tag(run_id, STATUS, "running")
        for key, value in exp_tags.items():  # where the search lives now (a resume may name other storage)
            client.set_tag(run_id, key, value)
            client.set_experiment_tag(exp_id, key, value)
        return run_id
    run = client.create_run(exp_id, run_name=experiment, tags={**tags, ROLE: "search", SEARCH: experiment,
                                                                STATUS: "running"})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        for name, text in artifacts.items():
            (Path(folder) / name).write_text(text)
            client.log_artifact(run.info.run_id, str(Path(folder) / name), "config")
    return run.info.run_id
