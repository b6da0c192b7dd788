"""Library noise off for a person at a terminal: one call before Ray starts; `verbose=true` leaves it all on.

What each setting silences (seen in a smoke search with ray 2.60, optuna 5.0, mlflow 3.x):
- RAY_AIR_NEW_OUTPUT=0: Tune's new output engine prints its "Configuration for experiment" box,
  "View detailed results here" and the TensorBoard hint even at verbose=0; the legacy engine at
  verbose=0 prints nothing (the search has its own console).
- ray._private.worker: "Started a local Ray instance.", "Calling ray.init() again ...".
- ray._private.authentication: the token-auth notice and "Generated new authentication token"
  (token auth stays on; only the message goes).
- ray.tune: "Wrote the latest version of all result files ..." after every search.
- ray.tune.tune (a filter, these two only): on a stop signal "Stop signal received ... Press CTRL+C
  ... to skip" and "Experiment has been interrupted ... Resume experiment with: Tuner.restore(...)";
  the search says itself that its state is saved, and which command continues it.
- optuna: "A new study created in memory/RDB ...", "Using an existing study ...", and its
  ExperimentalWarning category.
- mlflow.store.db.utils, alembic: "Creating initial MLflow database tables...", "Updating database
  tables", alembic's migration lines on a new SQLite store.
Warnings and errors of these libraries still print.
"""

from __future__ import annotations

import logging
import os
import warnings

ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A tqdm bar per artifact transfer (a search uploads configs and teacher weights).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Levels on child loggers: ray.init() resets the "ray" logger's own level, not these.
LOGGER_LEVELS = {
    "ray._private.worker": logging.WARNING,
    "ray._private.authentication": logging.ERROR,
    "ray.tune": logging.WARNING,
    "ray.air": logging.WARNING,
    "mlflow.store.db.utils": logging.WARNING,
    "alembic": logging.WARNING,
}


# Tune's own advice when the driver is stopped: a Python API instead of the command that continues the search.
TUNE_STOP_ADVICE = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted")


class _DropTuneStopAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_STOP_ADVICE)


def quiet_libraries(verbose: bool = False) -> None:
    """Switch off Ray, Tune, Optuna and MLflow chatter (verbose=True: change nothing); call before ray.init()."""
    if verbose:
        return
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)  # a value the person set wins
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropTuneStopAdvice) for f in tune_logger.filters):
        tune_logger.addFilter(_DropTuneStopAdvice())
    import optuna

    # Optuna sets its own logger's level when first imported, so it is set through Optuna.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
