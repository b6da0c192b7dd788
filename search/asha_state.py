"""ASHA's rung records across a resume.

Tune saves the searcher and every callback's state with each experiment snapshot, but not the
scheduler: after `resume=true` ASHA would start with empty rungs and judge resumed and new trials
against nothing. `SchedulerState` is a callback that carries the scheduler's state (through ASHA's
own save/restore) in the same snapshot as the trials, so the two always agree; `ResumableASHA`
keeps each restored trial in the bracket it was in.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

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
