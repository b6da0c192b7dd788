"""The RSLAD training library: config, data, models, attacks, methods, teachers, evaluation and the epoch loop.

Imports no ray, mlflow or hydra; `from trainables import TrainConfig, fit` works in a notebook.
The one Ray adapter lives in trainables.ray_adapter and is imported only by search/.
"""

from trainables.config import ConfigError, TrainConfig
from trainables.loop import Training, fit

__all__ = ["ConfigError", "TrainConfig", "Training", "fit"]
