"""The Optuna searcher, told about trials that failed without an error Tune could see."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from trainables.ray_adapter import FAILED


class OptunaSearcher(OptunaSearch):
    """OptunaSearch that records a trial ending on the trainable's failure flag as FAIL, not as a NaN score."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get(FAILED):
            # The failure result carries the metric as NaN (Tune requires it); Optuna refuses to COMPLETE
            # a NaN and would leave the trial RUNNING in the study.
            super().on_trial_complete(trial_id, result=None, error=True)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
