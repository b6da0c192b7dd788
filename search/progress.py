"""Progress for a person while a search runs: trial counts and the best so far, one line at a time."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

from search.tracking import trial_status
from trainables.ray_adapter import FAILED, RESTORE_WARNING

log = logging.getLogger("search")


class Progress(tune.Callback):
    """Logs a status line when a trial ends and at most every `every_s` seconds otherwise."""

    def __init__(self, metric: str, every_s: float = 20.0) -> None:
        self.metric = metric
        self.every_s = every_s
        self._last = 0.0
        self.ended: dict[str, str] = {}

    def line(self, trials: list) -> str:
        """'3 running, 2 stopped early, 1 finished, 0 failed; best val_pgd_acc 0.612 (trial x)'."""
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = sum(1 for t in trials if t.status == "PENDING")
        states = list(self.ended.values())
        best = max((t for t in trials if t.last_result and f"best_{self.metric}" in t.last_result),
                   key=lambda t: t.last_result[f"best_{self.metric}"], default=None)
        text = (f"{running} running, {pending} pending, {states.count('stopped_early')} stopped early, "
                f"{states.count('finished')} finished, {states.count('failed')} failed")
        if best is not None:
            text += f"; best {self.metric} {best.last_result[f'best_{self.metric}']:.4f} ({best.trial_id})"
        return text

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(RESTORE_WARNING):
            log.warning("trial %s: %s", trial.trial_id, result[RESTORE_WARNING])
        if time.monotonic() - self._last > self.every_s:
            self._last = time.monotonic()
            log.info("progress: %s", self.line(trials))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = trial_status(trial)
        if self.ended[trial.trial_id] == "failed":
            log.warning("trial %s failed (not retried): %s; %s", trial.trial_id, trial.last_result[FAILED],
                        self.line(trials))
            return
        log.info("trial %s %s after %s epochs; %s", trial.trial_id, self.ended[trial.trial_id],
                 (trial.last_result or {}).get("epoch", 0), self.line(trials))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "failed"
        log.warning("trial %s failed; %s", trial.trial_id, self.line(trials))
