"""Each trial's accuracy with its uncertainty, in the driver: the Wilson interval of its best validation accuracy from
the number of validation images, for the final tables (search.run, search.replicate) and as metrics on its MLflow run
(best_<metric>_ci_low, best_<metric>_ci_high).

The interval covers the sampling of the validation images only (one model, n images); the seed-to-seed spread of a
configuration is what `python -m search.replicate` measures. The metrics are written once a command's trials have
ended; like the rest of the driver's MLflow records, a store that cannot be written costs the records, not the search.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable, Mapping

from analysis.stats import BinomialInterval
from analysis.uncertainty import accuracy_interval, validation_images
from trainables.schema import SEARCH, TRIAL_ID

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


def record_intervals(tracking_uri: str, experiment: str, metric: str, results: Iterable[Any]) -> None:
    """Log the interval of each of Tune's results (a trial's config and last metrics) to its run, found by trial id;
    a store that fails is a warning, not an error."""
    from mlflow.entities import Metric  # heavy: only once trials have ended
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return
        now = int(time.time() * 1000)
        for result in results:
            trial_id, interval = (result.metrics or {}).get("trial_id"), trial_interval(result.config, result.metrics,
                                                                                          metric)
            if interval is None or trial_id is None:
                continue
            found = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
                f"tags.`{TRIAL_ID}` = '{trial_id}' and tags.`{SEARCH}` = '{experiment}'"))
            if found:
                client.log_batch(found[0].info.run_id, metrics=[
                    Metric(k, float(v), now, 0) for k, v in interval_metrics(metric, interval).items()])
    except Exception as err:  # noqa: BLE001  (MLflow, SQLAlchemy and HTTP clients raise their own kinds)
        log.warning("the trials' intervals were not recorded in MLflow (%s: %s)", type(err).__name__,
                    " ".join(str(err).split())[:200])
