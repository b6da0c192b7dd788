"""The searcher and the scheduler state that survive a resume: the Optuna study in a database, ASHA's rungs."""

from __future__ import annotations

import logging
import math
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import validate_warmstart

from search.config import SearchInputError
from trainables.paths import sqlite_file

# --- the Optuna study ---------------------------------------------------------------------------------------
# The search's Optuna study in a database (so optuna-dashboard can open it), with ASHA-stopped trials as PRUNED.
#
# Ray's OptunaSearch keeps the study in memory and tells Optuna that a trial the scheduler
# stopped is COMPLETE with its truncated score, which makes TPE favour fast starters. StudySearch
# keeps the study in an RDB next to the tracking store (study name = search name) and tells
# Optuna what happened: COMPLETE when the trial ran its whole schedule, PRUNED (with its
# per-epoch intermediate values) when the scheduler stopped it, FAIL when it failed.
#
# Resume: the study is not pickled with the searcher (Tune pickles searchers into tuner.pkl and
# searcher-state files); only the Ray trial id -> Optuna trial id map and the sampler are, and the
# study is reloaded from the database on first use. Warm-start points are enqueued only when the
# study is created, so a resumed search never duplicates them; Optuna trials that were suggested
# after the last saved searcher state (Ray does not know them) are marked FAIL, not left RUNNING.

log = logging.getLogger(__name__)

RAY_TRIAL_ATTR = "ray_trial_id"
ORPHAN_REASON = "suggested after the searcher state Ray saved last; Ray never ran it (search interrupted)"


def _rdb_storage(url: str):
    """An RDBStorage on `url`; a sqlite file gets its folder and waits for readers (optuna-dashboard) instead of failing."""


    kwargs: dict[str, Any] = {}
    db = sqlite_file(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30}}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def study_names(url: str) -> list[str]:
    """Study names in the database at `url` ([] when a sqlite file does not exist yet; nothing is created)."""


    db = sqlite_file(url)
    if db is not None and not db.is_file():
        return []
    return optuna.study.get_all_study_names(storage=_rdb_storage(url))


def check_new_study(url: str | None, name: str) -> None:
    """Preflight for a NEW search: refuse a name whose study already exists (its trials would mix with this search's)."""
    if url is None or name not in study_names(url):
        return
    raise SearchInputError(
        f"an Optuna study named {name!r} already exists in {url}; pick another name= or remove it with "
        f"optuna delete-study --study-name {name} --storage {url}")


def ran_whole_schedule(result: Mapping[str, Any]) -> bool:
    """Whether a trial's final result ends its schedule (schedule_pct 100, or epoch == train.epochs); True if unknown."""
    if "schedule_pct" in result:
        return float(result["schedule_pct"]) >= 100.0 - 1e-6
    epochs = result.get("config/train/epochs", (result.get("config") or {}).get("train", {}).get("epochs"))
    if "epoch" in result and epochs is not None:
        return int(result["epoch"]) >= int(epochs)
    return True


class StudySearch(OptunaSearch):
    """OptunaSearch whose study lives in a database and records scheduler-stopped trials as PRUNED."""

    def __init__(self, space: Callable, metric: str, mode: str, *, study_name: str, storage_url: str | None,
                 seed: int | None = None, points_to_evaluate: list[dict] | None = None,
                 finished: Callable[[Mapping[str, Any]], bool] = ran_whole_schedule) -> None:
        if isinstance(mode, list) or isinstance(metric, list):
            raise ValueError("StudySearch supports one metric and one mode")
        self._storage_url = storage_url
        self._finished = finished
        self._ot_trial_ids: dict[str, int] = {}
        self._saved_sampler = None
        self._unpickled = False
        super().__init__(space=space, metric=metric, mode=mode, points_to_evaluate=points_to_evaluate,
                         seed=seed, study_name=study_name)

    # --- the study, created lazily -------------------------------------------------------------
    def _setup_study(self, mode: Any) -> None:
        # Called from OptunaSearch.__init__: defer. A driver that builds the searcher only to
        # restore another one from disk (resume) must not touch, or enqueue into, the database.
        self._ot_study = None

    @property
    def study(self):
        """The optuna Study (loaded or created on first use)."""
        return self._ensure_study()

    def _ensure_study(self):
        if self._ot_study is not None:
            return self._ot_study
        storage = _rdb_storage(self._storage_url) if self._storage_url else None
        existed = storage is not None and self._study_name in optuna.study.get_all_study_names(storage=storage)
        sampler = self._saved_sampler or self._sampler or optuna.samplers.TPESampler(seed=self._seed)
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
                                    study_name=self._study_name, load_if_exists=True,
                                    direction="minimize" if self._mode == "min" else "maximize")
        self._ot_study = study
        self._ot_trials = {tid: optuna.trial.Trial(study, ot_id) for tid, ot_id in self._ot_trial_ids.items()}
        if not existed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental in some Optuna releases
                study.set_metric_names([self._metric])  # optuna-dashboard's axis: val_pgd_acc, not "Objective 0"
            if self._points_to_evaluate:
                validate_warmstart(self._space, self._points_to_evaluate, self._evaluated_rewards,
                                   validate_point_name_lengths=not callable(self._space))
                for point in self._points_to_evaluate:
                    study.enqueue_trial(point)
        elif self._unpickled:
            self._fail_orphans(study)
        else:
            log.warning("Optuna study %r already exists in %s; this search adds its trials to it",
                        self._study_name, self._storage_url)
        return study

    def _fail_orphans(self, study) -> None:
        """Mark FAIL the RUNNING Optuna trials Ray does not know (suggested after the last saved state)."""
        known = set(self._ot_trial_ids.values())
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:
                study._storage.set_trial_system_attr(frozen._trial_id, "fail_reason", ORPHAN_REASON)
                study.tell(frozen.number, state=TrialState.FAIL)
                log.info("Optuna trial %d was never run by Ray (interrupted search): marked FAIL", frozen.number)

    # --- Tune's searcher interface -------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        """Ask the study for a trial (an enqueued warm-start point first) and remember which Ray trial it is."""
        self._ensure_study()
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            self._ot_trial_ids[trial_id] = ot_trial._trial_id
            ot_trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Record the metric as an intermediate value at step = epoch (what optuna-dashboard plots)."""
        self._ensure_study()
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or self.metric not in result:
            return
        if not math.isfinite(float(result[self.metric])):
            return
        step = int(result.get("epoch", result.get(TRAINING_ITERATION, 0)))
        with warnings.catch_warnings():
            # A trial restored from its checkpoint reports its last epoch again: Optuna keeps the first value.
            warnings.simplefilter("ignore")
            try:
                ot_trial.report(float(result[self.metric]), step)
            except UpdateFinishedTrialError:
                pass  # told before an interruption the experiment state did not see; the study already has it

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """COMPLETE when the trial ran its whole schedule, PRUNED when the scheduler stopped it, FAIL on error."""
        study = self._ensure_study()
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        if study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return
        state, value = self.outcome(result, error)
        if state != TrialState.FAIL and result and self.metric in result:
            # Tune sends a trial's last result only here: it completes the curve, and a pruned
            # trial's last intermediate value is the score it was stopped with.
            self.on_trial_result(trial_id, result)
        self._completed_trials.add(trial_id)
        try:
            study.tell(ot_trial, value, state=state)
        except (ValueError, RuntimeError) as err:  # e.g. a NaN metric: Optuna records the trial as FAIL
            log.warning("Optuna trial %d (%s): %s", ot_trial.number, trial_id, err)

    def outcome(self, result: Mapping[str, Any] | None, error: bool) -> tuple[Any, float | None]:
        """(Optuna state, value) for a trial that ended with `result` (its last result) and `error`."""
        if error:
            return TrialState.FAIL, None
        value = None if not result else result.get(self.metric)
        if value is None:
            return TrialState.PRUNED, None  # removed before it reported (Ray's own rule)
        if not math.isfinite(float(value)):
            return TrialState.FAIL, None  # e.g. the trainable's last result for a non-finite loss
        if not self._finished(result):
            return TrialState.PRUNED, None  # Optuna takes the last intermediate value as its value
        return TrialState.COMPLETE, float(value)

    # --- pickling and Tune's save/restore ------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._storage_url is None:
            return state  # an in-memory study can only travel inside the pickle
        if self._ot_study is not None:
            state["_saved_sampler"] = self._ot_study.sampler
            state["_ot_trial_ids"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        state["_ot_study"] = None
        state["_ot_trials"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._unpickled = True

    def save(self, checkpoint_path: str) -> None:
        """Searcher state for Tune's experiment checkpoint: the id map and the sampler, not the study."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Back to a saved state; the study is reloaded from the database on next use."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if not isinstance(state, dict) or "_ot_trial_ids" not in state:
            raise ValueError(f"{checkpoint_path} is not a StudySearch state")
        self.__setstate__(state)
        if self._storage_url is not None:
            self._ot_study = None


# --- ASHA's rungs -------------------------------------------------------------------------------------------
# ASHA's rung records across a resume.
#
# Tune saves the searcher and every callback's state with each experiment snapshot, but not the
# scheduler: after `resume=true` ASHA would start with empty rungs and judge resumed and new trials
# against nothing. `SchedulerState` is a callback that carries the scheduler's state (through ASHA's
# own save/restore) in the same snapshot as the trials, so the two always agree; `ResumableASHA`
# keeps each restored trial in the bracket it was in.

log = logging.getLogger("search")


class ResumableASHA(ASHAScheduler):
    """ASHA whose rung records can be saved with Tune's snapshots and restored before resumed trials are added."""

    _just_restored = False

    def state_bytes(self) -> bytes:
        """The whole scheduler state (rungs, trial -> bracket), through ASHA's own save()."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scheduler.pkl"
            self.save(str(path))
            return path.read_bytes()

    def load_state_bytes(self, blob: bytes) -> None:
        """Put back what state_bytes() returned (ASHA's own restore())."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scheduler.pkl"
            path.write_bytes(blob)
            self.restore(str(path))
        self._just_restored = True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._trial_info:
            # Restored with its bracket, or re-added to retry it: ASHA would pick a bracket at random again.
            # After a restore this is said once, from the object Tune really schedules with.
            if self._just_restored:
                self._just_restored = False
                log.info("ASHA continues with its rung records from before the resume "
                         "(milestone: trials recorded): %s", self.rung_counts())
            return
        super().on_trial_add(tune_controller, trial)

    def rung_counts(self) -> dict[str, int]:
        """Records per rung milestone, e.g. {'25': 4, '50': 2}."""
        counts: dict[str, int] = {}
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                counts[f"{milestone:g}"] = counts.get(f"{milestone:g}", 0) + len(recorded)
        return counts


class SchedulerState(tune.Callback):
    """Saves the scheduler's state with every experiment snapshot and puts it back on resume."""

    def __init__(self, scheduler: ResumableASHA) -> None:
        # Pickled in the same tuner.pkl as the TuneConfig's scheduler: after a restore both are one object.
        self.scheduler = scheduler

    def get_state(self) -> dict | None:
        return {"scheduler": self.scheduler.state_bytes()}

    def set_state(self, state: dict) -> None:
        self.scheduler.load_state_bytes(state["scheduler"])
