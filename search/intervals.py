"""Each trial's accuracy with its uncertainty, in the driver: the Wilson interval of its best validation accuracy from
the number of validation images, for the final tables (search.run, search.replicate) and as metrics on its MLflow run
(best_<metric>_ci_low, best_<metric>_ci_high).

The interval covers the sampling of the validation images only (one model, n images); the seed-to-seed spread of a
configuration is what `python -m search.replicate` measures. The tracker writes the metrics with the run's end, through
its queue like every other record.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from analysis.stats import BinomialInterval
from analysis.uncertainty import accuracy_interval, validation_images

log = logging.getLogger("search")


def trial_interval(config: Mapping[str, Any], result: Mapping[str, Any] | None, metric: str) -> BinomialInterval | None:
    """The Wilson interval of a trial's best_<metric> (None: no value yet, or the number of images is unknown)."""
    value = (result or {}).get(f"best_{metric}")
    n = validation_images(config.get("train", {}))
    if value is None or not n or not math.isfinite(float(value)) or not 0 <= float(value) <= 1:
        return None
    return accuracy_interval(float(value), n)


def interval_metrics(metric: str, interval: BinomialInterval) -> dict[str, float]:
    """The MLflow metrics of one trial's interval."""
    return {f"best_{metric}_ci_low": interval.low, f"best_{metric}_ci_high": interval.high}
