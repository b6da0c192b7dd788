"""All of MLflow: the search's tracker (a Tune callback), the runs view the UI opens on, URLs, the teachers' model
registry, and the checks of the store before anything starts."""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode

from ray import tune

from search import driver
from search.config import SearchConfig, SearchInputError
from search.storage import check_creatable, check_writable_file
from trainables.paths import sqlite_file
from trainables.schema import (
    BEST_TRIAL,
    CHECKPOINT_DIR,
    EPOCHS_RUN,
    ERROR,
    FAILED,
    METRIC_KEYS,
    METRIC_TAG,
    RESTORE_WARNING,
    ROLE,
    SEARCH,
    SEARCH_ID,
    STATUS,
    STORAGE,
    TRIAL_ID,
    WINNER_PREFIX,
)
from trainables.teachers import get_teacher

# mlflow is imported inside the functions that use it: its import reads MLFLOW_LOGGING_LEVEL, which
# driver.quiet_libraries sets first, and costs seconds that --help and a refused command line do not pay.

# --- the tracker: one parent run per search, one child run per trial ----------------------------------------
# MLflow tracking from the driver: one parent run per search, one child run per Ray trial.
#
# Ray's stock MLflowLoggerCallback opens a new run for every trial it sees after a restore
# (duplicates, orphans left RUNNING) and cannot tell an ASHA stop from a finished trial. This
# callback finds its runs again by tag (`rslad.search`, `ray.trial_id`) so a resumed search
# reattaches to them, and records each trial's real status. All writes happen in the driver
# process: SQLite takes one writer at a time.
#
# Across faults: a stop signal leaves the parent and the unfinished trials' runs KILLED (reopened by
# the resume); a trial restored from an older checkpoint does not log the epochs it repeats; a resumed
# search writes to the tracking URI of the command that resumes it; a SQLite store keeps artifacts in
# `mlartifacts/` beside the database file, not in the working directory.
#
# What the UI shows (MLflow 3): the experiment is tagged as model development and carries a stored
# runs view (runs_view below: searched params, best_val_pgd_acc, status columns, every run
# listed best first); each trial's run is named after its searched values and trial id,
# with how it ended appended (`alpha_ratio=5 · 75cf6ae3 · stopped 2/8`); the parent logs the
# same metric names as its trials (the winner's best_val_pgd_acc, best_val_clean_acc, best_epoch)
# and the winner's searched values as `winner.<param>` tags, which a resume may update (params
# could not change once logged).

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"
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
        stopped_by = driver.received()
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

        metric = self.parent_tags.get(METRIC_TAG, "val_pgd_acc")
        scored = [t for t in trials if t.last_result and f"best_{metric}" in t.last_result
                  and not t.last_result.get(FAILED)]
        if scored:
            best = max(scored, key=lambda t: t.last_result[f"best_{metric}"])
            now = int(time.time() * 1000)
            # best_val_clean_acc is the clean accuracy at the winner's best epoch, not its last one.
            numbers = {k: best.last_result[k] for k in (f"best_{metric}", "best_val_clean_acc", "best_epoch")
                       if k in best.last_result}
            values = searched_values(best.config)
            tags = [RunTag(BEST_TRIAL, best.trial_id)] + [
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
        self.client.set_tag(self.run_id(trial), CHECKPOINT_DIR, checkpoint.path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        status = trial_status(trial)
        self.client.set_tag(run_id, STATUS, status)
        if status == "failed":
            self.client.set_tag(run_id, ERROR, str(trial.last_result[FAILED])[:4000])
        self.client.update_run(run_id, name=run_name(trial, status))
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, STATUS, "failed")
        self.client.set_tag(run_id, ERROR, error_summary(trial))
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
    view = runs_view(searched, tags.get(METRIC_TAG, "val_pgd_acc"))
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


# --- what the UI opens on -----------------------------------------------------------------------------------
# What makes MLflow 3's UI open a search on its trials: experiment tags and the URL of the runs table.
#
# Found in MLflow 3.17's UI (and checked with headless Chromium, tests/test_screenshots.py):
# - The UI shows an experiment in "GenAI" mode (an Overview of traces, a "Detect Issues" popup)
#   unless the URL says `workflowType=machine_learning` or the browser remembered "Model training";
#   the experiment tag `mlflow.experimentKind=custom_model_development` is recorded (the kind
#   selector shows it) but does not change where the page lands.
# - `#/experiments/<id>/runs?viewStateShareKey=<key>` opens the runs table with the view stored in
#   the experiment tag `mlflow.sharedViewState.<key>` (plain JSON is accepted): which columns show,
#   the sort order (MLflow 3.17 takes `runsExpanded` from a shared view's JSON but drops it).
# - The table nests child runs under their parent (collapsed) only when it is sorted by start time
#   and not filtered; sorted by a metric it lists every run flat. The view sorts by the best metric:
#   all trials show at once, ranked, with the parent run (which logs the winner's numbers under the
#   same names) beside the winner.
# - Run Name, Created and Duration always show; the view adds few columns after them so the
#   searched params and the status fit a laptop screen.

KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
VIEW_KEY = "rslad"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# MLflow stores tag values up to 8000 characters (5000 in older stores): a view must stay below.
MAX_TAG_CHARS = 5000
RUN_NAME_COLUMN = "attributes.`Run Name`"
RUN_NAME_WIDTH = 320  # px: 'alpha_ratio=1.252 · 600b0a1c · stopped 2/4' whole (the UI's default, 190, cuts it)


def column(kind: str, name: str) -> str:
    """The UI's column key: params.`alpha`, metrics.`val_pgd_acc`, tags.`rslad.status`."""
    return f"{kind}.`{name}`"


def runs_view(searched: Iterable[str], metric: str, metrics: Iterable[str] = ("best_val_clean_acc",),
              tags: Iterable[str] = ("rslad.status",)) -> dict:
    """The runs-table view of a search: searched params, the best metric, clean accuracy, the trial status;
    every run listed, best first."""
    best = f"best_{metric}"
    columns = ([column("params", f"search.{p}") for p in searched] + [column("metrics", best)]
               + [column("metrics", m) for m in metrics if m != best] + [column("tags", t) for t in tags])
    return {"selectedColumns": columns, "orderByKey": column("metrics", best), "orderByAsc": False,
            "columnOrder": [RUN_NAME_COLUMN], "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH}}


def experiment_tags(view: dict, key: str = VIEW_KEY) -> dict[str, str]:
    """Experiment tags that mark a search as model development and store its runs view under `key`."""
    text = json.dumps(view, separators=(",", ":"))
    if len(text) > MAX_TAG_CHARS:
        raise ValueError(f"runs view of {len(text)} characters does not fit an MLflow tag ({MAX_TAG_CHARS})")
    return {KIND_TAG: MODEL_DEVELOPMENT, f"{VIEW_TAG_PREFIX}{key}": text}


def runs_url(ui: str, experiment_id: str, key: str | None = VIEW_KEY) -> str:
    """URL of the experiment's runs table in model-training mode (with the stored view when `key` is given)."""
    query = {"workflowType": "machine_learning", **({"viewStateShareKey": key} if key else {})}
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def browse_lines(cfg: SearchConfig, name: str, study_url: str | None) -> list[str]:
    """How to open the search in MLflow's UI (its runs table, directly) and in optuna-dashboard."""
    lines = []
    uri = cfg.tracking.uri
    if cfg.tracking.enabled:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(uri).get_experiment_by_name(name)
        if uri.startswith(("http://", "https://")):
            lines.append(f"browse: {runs_url(uri, exp.experiment_id) if exp else uri}   (experiment '{name}')")
        else:
            ui = "http://127.0.0.1:5000"
            lines.append(f"browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
            if exp is not None:
                lines.append(f"        then open {runs_url(ui, exp.experiment_id)}")
    if study_url:
        lines.append(f"study:  optuna-dashboard {study_url} --host 127.0.0.1 --port 8080   "
                     f"(study '{name}'; pip install optuna-dashboard)")
    return lines


# --- the store, checked before anything starts --------------------------------------------------------------
HEALTH_TIMEOUT_S = 5


def check_tracking_store(cfg: SearchConfig) -> None:
    """The MLflow store can be written (a sqlite file's folder and file) or answers (a server); nothing when tracking is off."""
    if not cfg.tracking.enabled:
        return
    uri = cfg.tracking.uri
    db = sqlite_file(uri)
    if db is not None:
        check_creatable(db.parent, f"tracking.uri={uri}")
        if db.exists():
            check_writable_file(db, f"tracking.uri={uri}")
    elif uri.startswith(("http://", "https://")):
        check_server(uri)


def check_server(uri: str) -> None:
    """An MLflow server answers at all (MLflow itself would retry an unreachable one for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 from the basic-auth app): MLflow's own calls will say more
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise SearchInputError(f"tracking.uri={uri}: the MLflow server does not answer ({problem}); "
                           "start it, or use tracking.uri=sqlite:////abs/path.db")


def check_tracking_name(cfg: SearchConfig, name: str, experiment_path: str, saved: dict | None) -> None:
    """The MLflow experiment of this name is free (new search) or belongs to this very search (resume)."""
    if not cfg.tracking.enabled:
        return
    uri = cfg.tracking.uri
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        return  # nothing recorded yet; opening it with MLflow would create it
    exp = _experiment(uri, name)
    if exp is None:
        return
    if exp.lifecycle_stage == "deleted":
        raise SearchInputError(f"name={name!r} belongs to a deleted MLflow experiment in {uri}; "
                               f"restore or purge it (mlflow gc), or pick another name=")
    owner = exp.tags.get(SEARCH_ID)
    where = exp.tags.get(STORAGE)
    if cfg.resume and owner is not None and saved is not None and owner == saved["search_id"]:
        return
    raise SearchInputError(f"name={name!r} is already used in the tracking store {uri} by "
                           f"{'another ' if cfg.resume else 'the '}search stored at {where or 'an unknown place'}; "
                           f"pick another name=")


def _experiment(uri: str, name: str) -> Any:
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_experiment_by_name(name)
    except Exception as err:  # noqa: BLE001  (MLflow, SQLAlchemy and sqlite3 each raise their own kind)
        first = " ".join(str(err).split()).split(" [SQL:")[0][:300]
        raise SearchInputError(f"tracking.uri={uri} cannot be read as an MLflow store "
                               f"({type(err).__name__}: {first})") from None


# --- the teachers' model registry ---------------------------------------------------------------------------
REGISTERED_PREFIX = "rslad-teacher-"
ARTIFACT_DIR = "teacher"
TEACHERS_EXPERIMENT = "teachers"


def registered_versions(tracking_uri: str, name: str) -> list:
    """The MLflow model registry's versions of teacher `name` ([] when none, or the store has none: a missing
    SQLite file is not opened, so nothing is created)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    db = sqlite_file(tracking_uri)
    if db is not None and not db.exists():
        return []
    try:
        return list(MlflowClient(tracking_uri).search_model_versions(f"name='{REGISTERED_PREFIX}{name}'"))
    except MlflowException:
        return []


def fetch_registered(name: str, dest: Path, tracking_uri: str) -> bool:
    """Download the newest registered version of teacher `name` from MLflow into dest; False if none."""
    versions = registered_versions(tracking_uri, name)
    if not versions:
        return False
    newest = max(versions, key=lambda v: int(v.version))
    import mlflow.artifacts

    dest.parent.mkdir(parents=True, exist_ok=True)
    got = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{newest.run_id}/{ARTIFACT_DIR}/{name}.pt",
                                              dst_path=str(dest.parent / f".{name}.download"),
                                              tracking_uri=tracking_uri)
    Path(got).replace(dest)
    log.info("teacher %s: version %s from the MLflow model registry -> %s", name, newest.version, dest)
    return True


def register_teacher_model(name: str, path: Path, train: dict[str, Any], meta: dict, tracking_uri: str) -> str:
    """Log the teacher's weights and metrics in the 'teachers' experiment and register a model version."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(client, TEACHERS_EXPERIMENT, tracking_uri)
    spec = get_teacher(name)
    run = client.create_run(exp_id, run_name=name, tags={ROLE: "teacher", "rslad.teacher": name,
                                                         "rslad.arch": spec.arch, "rslad.dataset": spec.dataset})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in train.items()],
                     metrics=[Metric(k, float(v), 0, int(meta["epoch"])) for k, v in meta["metrics"].items()])
    client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    client.set_terminated(run_id, "FINISHED")
    model_name = REGISTERED_PREFIX + name
    try:
        client.create_registered_model(model_name, description=f"RSLAD teacher {name} ({spec.arch}, {spec.method})")
    except MlflowException:
        pass  # already registered: add a version
    version = client.create_model_version(model_name, source=f"runs:/{run_id}/{ARTIFACT_DIR}", run_id=run_id,
                                          tags={k: str(v) for k, v in meta["metrics"].items()})
    return version.version
