"""All of MLflow: the search's tracker (a Tune callback), the runs view the UI opens on, URLs, the teachers' model
registry, and the checks of the store before anything starts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ray import tune

from search import driver
from search.config import SearchConfig, SearchInputError
from search.intervals import interval_metrics, trial_interval
from search.storage import check_creatable, check_writable_file
from search.tracking_queue import Journal, WriteQueue, queue_folder
from trainables.paths import is_uri, sqlite_file
from trainables.schema import (
    BEST_TRIAL,
    CHECKPOINT_DIR,
    EPOCHS_RUN,
    ERROR,
    FAILED,
    METRIC_KEYS,
    METRIC_TAG,
    ORPHANED,
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
# `mlartifacts/` beside the database file, not in the working directory; a resume closes the runs of trials Tune
# never saved (the driver killed right after a trial started) as KILLED, rslad.status=orphaned, tagged why.
#
# A tracking server that does not answer costs the search nothing: with an http(s) URI every write goes through a
# durable queue in the search's storage (search/tracking_queue.py) and a background thread; what is still queued
# when the search ends is written by its next resume or by `python -m search.tracking_sync`. A SQLite store is
# written at once, in Tune's callbacks, as it always was.
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


"""rslad.status of a run whose trial Tune never saved (the driver died right after the trial started): KILLED on resume."""
ORPHAN_TAG = "rslad.orphaned"
GROUP_TAG = "rslad.run_group"
"""Set on the runs of a tracker whose `run_group` is set (e.g. a search's replicates, in the search's experiment)."""
ORPHAN_REASON = ("the driver stopped before Tune saved this trial (e.g. killed right after the trial started), so the "
                 "resumed search could not continue it; closed when the search was resumed")


def remote(tracking_uri: str) -> bool:
    """A tracking server that may not answer (http, https): its writes go through the durable queue."""
    return tracking_uri.startswith(("http://", "https://"))


class MLflowTracker(tune.Callback):
    """A Tune callback that records the search in MLflow, idempotently across restores, without ever waiting for a
    tracking server.

    Each callback turns what Tune says into a few operations (plain JSON, trials named by their Ray trial id, never by
    MLflow run id) for a RunWriter: applied at once to a SQLite store (one writer, never "down": as before), queued
    durably in the search's storage and written by a background thread for an http(s) server
    (search/tracking_queue.py).
    """

    run_group: str | None = None
    """Which of the experiment's trial runs belong to this tracker's Tune runs: a subclass that writes another set of
    trial runs into the same experiment (replicates) names its group, so that neither closes the other's runs as
    orphans. None: the search's own (runs without the tag)."""

    def __init__(self, tracking_uri: str, experiment: str, parent_tags: dict[str, str],
                 parent_params: dict[str, str], artifacts: dict[str, str], searched: list[str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.searched = list(searched or [])  # the space's param names: the runs view's columns
        self.experiment = experiment
        self.parent_tags = parent_tags
        self.parent_params = parent_params
        self.artifacts = artifacts  # artifact file name -> text (resolved config, space YAML)
        self._runtime()

    def _runtime(self) -> None:
        """What lives only in this process: the writer, the queue, what this session has seen."""
        self._writer: RunWriter | None = None
        self._queue: WriteQueue | None = None
        self._opened: set[str] = set()  # trials whose run this session has opened (found, reopened or created)
        self._ended: set[str] = set()  # trials that ended before this session (restored) or through a callback in it
        self._started = False

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment state; the writer, the queue and what was seen are rebuilt.
        keep = ("tracking_uri", "searched", "experiment", "parent_tags", "parent_params", "artifacts")
        return {k: self.__dict__[k] for k in keep if k in self.__dict__}

    def __setstate__(self, state: dict) -> None:
        state = {k: v for k, v in state.items() if not k.startswith("_") and k != "parent_id"}  # older pickles' caches
        self.__dict__.update(state)
        self._runtime()
        # A resume writes where the current command says, not where the pickled search once wrote.
        if self.experiment in _CURRENT:
            uri, tags = _CURRENT[self.experiment]
            self.tracking_uri = uri
            self.parent_tags = {**self.parent_tags, **tags}

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            self._writer = RunWriter(self.tracking_uri, self.experiment)
        return self._writer

    @property
    def client(self):
        return self.writer.client

    @property
    def parent_id(self) -> str | None:
        """The parent run's id once the writer has written the search's start (None before, or while queued)."""
        return self._writer.parent_id if self._writer is not None else None

    def journal(self) -> Journal | None:
        """The search's queue folder (None when the tracker does not know where the search is stored)."""
        storage = self.parent_tags.get(STORAGE)
        if not storage:
            return None
        return Journal(queue_folder(storage), target={"tracking_uri": self.tracking_uri, "experiment": self.experiment})

    def _emit(self, ops: list[dict]) -> None:
        if not ops:
            return
        if self._queue is not None:
            self._queue.put(ops)
        else:
            for op in ops:
                self.writer.apply(op)

    # --- parent --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Writes left queued by an earlier command first, then the experiment and the parent run (reopened on resume)."""
        journal = self.journal()
        if remote(self.tracking_uri):
            shorten_client_retries()
            self._queue = WriteQueue(journal, self.writer.apply, probe=lambda: server_answers(self.tracking_uri),
                                     transient=transient_error, target=self.tracking_uri)
            if self._queue.replayed:
                log.info("writing %d MLflow writes left queued by the search's last command", self._queue.replayed)
            self._queue.start()
        elif journal is not None and journal.segments():
            left = WriteQueue(journal, self.writer.apply, probe=lambda: True, transient=lambda err: False,
                              target=self.tracking_uri)
            log.info("writing %d MLflow writes left queued by the search's last command", left.replayed)
            left.flush()
        self._emit([{"op": "start", "tags": self.parent_tags, "params": self.parent_params,
                     "artifacts": self.artifacts, "searched": self.searched}])

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._started:  # the first step: what a resume restored, and runs of trials it did not restore
            self._started = True
            self._ended |= {t.trial_id for t in trials if str(t.status) in ("TERMINATED", "ERROR")}
            self._emit([{"op": "orphans", "known": [t.trial_id for t in trials], "group": self.run_group}])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close every child run and the parent: FINISHED with the best trial's numbers, or KILLED when the driver was
        stopped; then give the queue a moment to write what is left (what it cannot stays queued)."""
        stopped_by = driver.received()
        self._close_children(trials, stopped_by)
        if stopped_by:
            self._emit([{"op": "tags", "trial": None, "tags": {"rslad.interrupted": stopped_by}}])
        self._finish_parent(trials, "KILLED" if stopped_by else "FINISHED")
        if self._queue is not None:
            self._queue.drain()
            self._queue.stop()

    def _close_children(self, trials: list, stopped_by: str | None) -> None:
        """No child run stays RUNNING: ended trials (also those a resume restored as ended) say how they
        ended; trials still running when the driver was stopped are KILLED, and reopened on resume; runs of trials
        Tune does not know (never saved before the driver died) are KILLED as orphaned.

        After a stop signal Tune marks the trials it stops TERMINATED without any callback (its saved
        state keeps them unfinished): only trials that ended through a callback count as ended then.
        """
        plans = {}
        for trial in trials:
            if stopped_by and trial.trial_id not in self._ended:
                plans[trial.trial_id] = interrupted_plan(trial)
            elif str(trial.status) == "ERROR":
                plans[trial.trial_id] = error_plan(trial)
            elif str(trial.status) == "TERMINATED":
                plans[trial.trial_id] = complete_plan(trial, self.parent_tags.get(METRIC_TAG))
        self._emit([{"op": "close", "plans": plans, "known": [t.trial_id for t in trials], "group": self.run_group}])

    def _finish_parent(self, trials: list, status: str) -> None:
        """The winner's numbers under the trials' own metric names, its searched values as tags, the counts."""
        metric = self.parent_tags.get(METRIC_TAG, "val_pgd_acc")
        scored = [t for t in trials if t.last_result and f"best_{metric}" in t.last_result
                  and not t.last_result.get(FAILED)]
        winner = None
        if scored:
            best = max(scored, key=lambda t: t.last_result[f"best_{metric}"])
            # best_val_clean_acc is the clean accuracy at the winner's best epoch, not its last one.
            numbers = {k: float(best.last_result[k]) for k in (f"best_{metric}", "best_val_clean_acc", "best_epoch")
                       if k in best.last_result}
            winner = {"trial": best.trial_id, "numbers": numbers,
                      "values": {k: str(v) for k, v in searched_values(best.config).items()}}
        counts: dict[str, int] = {}
        for t in trials:
            state = trial_state(t)
            counts[state] = counts.get(state, 0) + 1
        # Teacher epochs computed vs read from the soft-label cache, over the whole search.
        sums = {}
        for key in ("rsl_cache_computed", "rsl_cache_reused"):
            values = [t.last_result[key] for t in trials if t.last_result and key in t.last_result]
            if values:
                sums[key] = float(sum(values))  # summed over the trials
        self._emit([{"op": "finish", "status": status, "winner": winner, "searched": self.searched,
                     "counts": str(counts), "sums": sums, "time": now_ms()}])

    # --- children ------------------------------------------------------------------------
    def _open(self, trial: Any) -> list[dict]:
        """The op that finds (and reopens) or creates the trial's run, the first time this session meets the trial."""
        if trial.trial_id in self._opened:
            return []
        self._opened.add(trial.trial_id)
        return [{"op": "open", "trial": trial.trial_id, "name": run_name(trial), "params": trial_params(trial.config),
                 "group": self.run_group}]

    def _trial_ops(self, trial: Any, *ops: dict) -> None:
        self._emit([*self._open(trial), *ops])

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ops(trial, {"op": "tags", "trial": trial.trial_id, "tags": {STATUS: "running"}})

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ops(trial, {"op": "tags", "trial": trial.trial_id, "tags": {STATUS: "running"}})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        ops = []
        if result.get(RESTORE_WARNING):
            ops.append({"op": "tags", "trial": trial.trial_id,
                        "tags": {"rslad.restore_warning": str(result[RESTORE_WARNING])[:4000]}})
        if not result.get(FAILED):  # the failure marker carries no epoch of its own
            # The writer skips an epoch the run already has (a trial restored from an older checkpoint repeats some).
            ops.append({"op": "metrics", "trial": trial.trial_id, "time": now_ms(),
                        "step": int(result.get("epoch", result.get("training_iteration", 0))),
                        "metrics": {k: float(result[k]) for k in METRIC_KEYS if k in result}})
        self._trial_ops(trial, *ops)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._trial_ops(trial, {"op": "tags", "trial": trial.trial_id, "tags": {CHECKPOINT_DIR: checkpoint_uri(checkpoint)}})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._trial_ops(trial, {"op": "end", "trial": trial.trial_id,
                                **complete_plan(trial, self.parent_tags.get(METRIC_TAG))})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        self._trial_ops(trial, {"op": "end", "trial": trial.trial_id, **error_plan(trial)})


def now_ms() -> int:
    return int(time.time() * 1000)


def complete_plan(trial: Any, metric: str | None = None) -> dict:
    """How the run of a trial Tune ended ends: finished, stopped_early (FINISHED) or failed (FAILED, with the reason);
    with the search's `metric`, the 95 % Wilson interval of its best_<metric> as metrics (best_<metric>_ci_low/high)."""
    status = trial_status(trial)
    tags = {STATUS: status}
    if status == "failed":
        tags[ERROR] = str(trial.last_result[FAILED])[:4000]
    plan = {"status": "FAILED" if status == "failed" else "FINISHED", "name": run_name(trial, status), "tags": tags}
    interval = trial_interval(trial.config, trial.last_result, metric) if metric and status != "failed" else None
    if interval is not None:
        plan["metrics"] = interval_metrics(metric, interval)
    return plan


def error_plan(trial: Any) -> dict:
    return {"status": "FAILED", "name": run_name(trial, "failed"), "tags": {STATUS: "failed", ERROR: error_summary(trial)}}


def interrupted_plan(trial: Any) -> dict:
    return {"status": "KILLED", "name": run_name(trial, "interrupted"), "tags": {STATUS: "interrupted"}}


def checkpoint_uri(checkpoint: Any) -> str:
    """Where a Tune checkpoint lives, as a URI a later command can open: its path with the scheme of its pyarrow
    filesystem (s3://bucket/..., gs://...; Ray's `checkpoint.path` drops it); a local folder stays a plain path."""
    path = str(checkpoint.path)
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    if kind == "local" or is_uri(path):
        return path
    if kind == "py":  # an fsspec filesystem wrapped by pyarrow
        protocol = getattr(getattr(getattr(fs, "handler", None), "fs", None), "protocol", None)
        kind = (protocol[0] if isinstance(protocol, (tuple, list)) else protocol) or ""
        if not kind or kind in ("file", "local"):
            return path
    return f"{ {'gcs': 'gs'}.get(kind, kind)}://{path.lstrip('/')}"


# --- the writes themselves: one RunWriter per command --------------------------------------------------------
class RunWriter:
    """Applies the tracker's operations to MLflow. Trials are named by Ray trial id and their runs found by tag
    (`rslad.search`, `ray.trial_id`), created when missing, so an operation written late (after an outage, by a resume
    or by `python -m search.tracking_sync`) still lands on its run, in order. Every operation is idempotent: a segment
    replayed after a crash changes nothing it already wrote (a metric op is skipped when its epoch is logged)."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client = None
        self.parent_id: str | None = None
        self._exp_id: str | None = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def apply(self, op: dict) -> None:
        handler = getattr(self, f"_op_{op.get('op')}", None)
        if handler is None:
            raise ValueError(f"unknown tracking operation {op.get('op')!r}")
        handler(op)

    # --- finding runs ---
    def exp_id(self) -> str:
        if self._exp_id is None:
            self._exp_id = get_or_create_experiment(self.client, self.experiment, self.tracking_uri)
        return self._exp_id

    def _search(self, where: str, max_results: int = 1000) -> list:
        return self.client.search_runs([self.exp_id()], filter_string=f"tags.`{SEARCH}` = '{self.experiment}' and {where}",
                                       max_results=max_results)

    def parent(self) -> str:
        """The parent run: written by this command's start op, else found by tag (else created, bare)."""
        if self.parent_id is None:
            found = self._search(f"tags.`{ROLE}` = 'search'", 1)
            self.parent_id = found[0].info.run_id if found else self.client.create_run(
                self.exp_id(), run_name=self.experiment, tags={ROLE: "search", SEARCH: self.experiment}).info.run_id
        return self.parent_id

    def run_of(self, trial_id: str, open_op: dict | None = None) -> str:
        """The trial's run: cached, else found by tag (reopened when `open_op` says so), else created."""
        if trial_id in self._runs and open_op is None:
            return self._runs[trial_id]
        found = self._search(f"tags.`{TRIAL_ID}` = '{trial_id}'", 1)
        if found:
            run = found[0]
            run_id = run.info.run_id
            if open_op is not None:
                self.client.update_run(run_id, status="RUNNING", name=open_op["name"])
                if ORPHAN_TAG in run.data.tags:  # closed as an orphan by another command, and known after all
                    self.client.delete_tag(run_id, ORPHAN_TAG)
            # Epochs a resumed trial repeats (from an older checkpoint) are not logged twice.
            self._last_step[trial_id] = int(run.data.tags.get(EPOCHS_RUN, 0))
        else:
            run = None
            group = (open_op or {}).get("group")
            run_id = self.client.create_run(
                self.client.get_run(self.parent()).info.experiment_id,
                run_name=(open_op or {}).get("name", f"trial{NAME_SEP}{trial_id}"),
                tags={"mlflow.parentRunId": self.parent(), ROLE: "trial", SEARCH: self.experiment, TRIAL_ID: trial_id,
                      STATUS: "running", **({GROUP_TAG: group} if group else {})}).info.run_id
            self._last_step[trial_id] = 0
        if open_op is not None and (run is None or not run.data.params):  # also a run created just before a crash
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in open_op["params"].items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[trial_id] = run_id
        return run_id

    def _run(self, op: dict) -> str:
        return self.parent() if op.get("trial") is None else self.run_of(op["trial"])

    def _end(self, run_id: str, plan: dict) -> None:
        if plan.get("metrics"):
            from mlflow.entities import Metric

            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms(), 0) for k, v in plan["metrics"].items()])
        self._tags(run_id, plan["tags"])
        self.client.update_run(run_id, name=plan["name"])
        self.client.set_terminated(run_id, plan["status"])

    def _tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # --- the operations ---
    def _op_start(self, op: dict) -> None:
        self.parent_id = ensure_parent_run(self.client, self.experiment, self.tracking_uri, op["tags"], op["params"],
                                           op["artifacts"], op["searched"])

    def _op_open(self, op: dict) -> None:
        self.run_of(op["trial"], open_op=op)

    def _op_tags(self, op: dict) -> None:
        self._tags(self._run(op), op["tags"])

    def _op_metrics(self, op: dict) -> None:
        from mlflow.entities import Metric, RunTag

        run_id, step = self.run_of(op["trial"]), int(op["step"])
        if step <= self._last_step.get(op["trial"], 0):
            return  # already logged (a repeated epoch, or a segment replayed after a crash)
        metrics = [Metric(k, float(v), int(op["time"]), step) for k, v in op["metrics"].items()]
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(EPOCHS_RUN, str(step))])
        self._last_step[op["trial"]] = step

    def _op_end(self, op: dict) -> None:
        self._end(self.run_of(op["trial"]), op)

    def _op_orphans(self, op: dict) -> None:
        """Runs of this search (of the op's run group) left RUNNING for trials Tune does not know: KILLED, tagged why."""
        self._close_running({}, set(op["known"]), op.get("group"))

    def _op_close(self, op: dict) -> None:
        self._close_running(op["plans"], set(op["known"]), op.get("group"))

    def _close_running(self, plans: dict[str, dict], known: set[str], group: str | None) -> None:
        for run in self._search(f"tags.`{ROLE}` = 'trial' and attributes.status = 'RUNNING'"):
            trial_id = run.data.tags.get(TRIAL_ID, "")
            if trial_id in plans:
                self._runs[trial_id] = run.info.run_id
                self._end(run.info.run_id, plans[trial_id])
            elif trial_id not in known and run.data.tags.get(GROUP_TAG) == group:
                name = (run.info.run_name or f"trial{NAME_SEP}{trial_id}")
                suffix = f"{NAME_SEP}{ORPHANED}"
                self._end(run.info.run_id, {"status": "KILLED", "name": name[:MAX_RUN_NAME - len(suffix)] + suffix,
                                            "tags": {STATUS: ORPHANED, ORPHAN_TAG: ORPHAN_REASON}})
                log.info("MLflow run %s of trial %s, which Tune never saved, closed as KILLED (orphaned)",
                         run.info.run_id, trial_id)

    def _op_finish(self, op: dict) -> None:
        from mlflow.entities import Metric, RunTag

        parent, when, winner = self.parent(), int(op["time"]), op["winner"]
        if winner:
            tags = [RunTag(BEST_TRIAL, winner["trial"])] + [
                RunTag(f"{WINNER_PREFIX}{k}", v) for k, v in winner["values"].items()]
            self.client.log_batch(parent, metrics=[Metric(k, v, when, 0) for k, v in winner["numbers"].items()],
                                  tags=tags)
            # A resumed search's new winner may lack a conditional param the old one had.
            old = self.client.get_run(parent).data.tags
            for key in (f"{WINNER_PREFIX}{k}" for k in op["searched"] if k not in winner["values"]):
                if key in old:
                    self.client.delete_tag(parent, key)
        self._tags(parent, {"rslad.trial_states": op["counts"]})
        if op["sums"]:
            self.client.log_batch(parent, metrics=[Metric(k, v, when, 0) for k, v in op["sums"].items()])
        self._tags(parent, {STATUS: "interrupted" if op["status"] == "KILLED" else "finished"})
        self.client.set_terminated(parent, op["status"])


# --- a server that may not answer ---------------------------------------------------------------------------
# The queue retries every write itself (forever, in order), so MLflow's own retries (about 2-4 minutes by default, in
# the writer's thread) would only delay noticing an outage and the end of one. Set unless the person set them.
CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 2


def shorten_client_retries() -> None:
    """MLflow's http retries made short for this process (the queue retries); a value the person set wins."""
    for key, value in CLIENT_RETRIES.items():
        os.environ.setdefault(key, value)


def server_answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """The MLflow server at `uri` answers its health check (any HTTP answer counts), without retries."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def transient_error(err: BaseException) -> bool:
    """An error worth retrying later (no answer, a timeout, a 5xx, 408 or 429), not a refusal of the write itself."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(err, RestException):
        code = err.get_http_status_code()
        return code >= 500 or code in (408, 429)
    if isinstance(err, MlflowException):  # raised by the client when the request itself failed
        return err.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return isinstance(err, (OSError, TimeoutError, ConnectionError))


def pending_writes(experiment_path: str) -> int:
    """Queued MLflow writes of the search stored at `experiment_path` (0 when none)."""
    try:
        return sum(len(ops) for _, ops in Journal(queue_folder(experiment_path)).load())
    except Exception:  # noqa: BLE001  (storage that cannot be listed now: nothing to say)
        return 0


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


def parent_run_id(client: Any, exp_id: str, experiment: str) -> str | None:
    """The search's parent run in its experiment (None when there is none yet)."""
    found = client.search_runs([exp_id], filter_string=f"tags.`{ROLE}` = 'search' and tags.`{SEARCH}` = '{experiment}'",
                               max_results=1)
    return found[0].info.run_id if found else None


def _parent_run(client: Any, exp_id: str, experiment: str, tags: dict[str, str], exp_tags: dict[str, str],
                params: dict[str, str], artifacts: dict[str, str]) -> str:
    run_id = parent_run_id(client, exp_id, experiment)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "rslad.resumed", "true")
        client.set_tag(run_id, STATUS, "running")
        for key, value in exp_tags.items():  # where the search lives now (a resume may name other storage)
            client.set_tag(run_id, key, value)
            client.set_experiment_tag(exp_id, key, value)
        if client.get_run(run_id).data.params:
            return run_id
    else:
        run_id = client.create_run(exp_id, run_name=experiment, tags={**tags, ROLE: "search", SEARCH: experiment,
                                                                       STATUS: "running"}).info.run_id
    # A new run, or one whose creation was the last thing written before the driver died.
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        for name, text in artifacts.items():
            (Path(folder) / name).write_text(text)
            client.log_artifact(run_id, str(Path(folder) / name), "config")
    return run_id


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
    """How to open the search in MLflow's UI (its runs table, directly) and in optuna-dashboard; and, when its
    tracking server did not answer, how many of its writes wait in the queue and what writes them."""
    lines = []
    uri = cfg.tracking.uri
    if cfg.tracking.enabled:
        from mlflow.tracking import MlflowClient

        if remote(uri):
            up = server_answers(uri)  # MLflow's own client would retry a server that is down for minutes
            exp = MlflowClient(uri).get_experiment_by_name(name) if up else None
            lines.append(f"browse: {runs_url(uri, exp.experiment_id) if exp else uri}   (experiment '{name}'"
                         f"{'' if up else '; the server does not answer now'})")
        else:
            exp = MlflowClient(uri).get_experiment_by_name(name)
            ui = "http://127.0.0.1:5000"
            lines.append(f"browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
            if exp is not None:
                lines.append(f"        then open {runs_url(ui, exp.experiment_id)}")
        lines.extend(pending_lines(cfg, name))
    if study_url:
        lines.append(f"study:  optuna-dashboard {study_url} --host 127.0.0.1 --port 8080   "
                     f"(study '{name}'; pip install optuna-dashboard)")
    return lines


def pending_lines(cfg: SearchConfig, name: str) -> list[str]:
    """What a person needs when some of the search's MLflow writes are still queued (none: no lines)."""
    experiment_path = f"{cfg.storage.rstrip('/')}/{name}"
    pending = pending_writes(experiment_path)
    if not pending:
        return []
    first = (f"mlflow: {pending} write(s) of this search are not in {cfg.tracking.uri} yet (the server did not answer); "
             f"they wait in {queue_folder(experiment_path)}")
    second = f"        and are written by its next resume=true, or now: {sync_command(name, cfg.storage, cfg.tracking.uri)}"
    return [first, second]


def sync_command(name: str, storage: str, uri: str) -> str:
    return f"python -m search.tracking_sync name={name} storage={storage} tracking.uri={uri}"


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
