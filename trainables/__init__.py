"""The RSLAD training library: config, data, models, attacks, methods, teachers, evaluation and the epoch loop.

Imports no ray, mlflow or hydra; `from trainables import TrainConfig, fit` works in a notebook.
The one Ray adapter lives in trainables.ray_adapter and is imported only by search/.
"""

from typing import Any

from trainables.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig", "Training", "fit"]


def __getattr__(name: str) -> Any:
    # The loop pulls in torch and every registry; import it on first use so that reading a
    # config (e.g. to print a CLI error) stays fast.
    if name in ("Training", "fit"):
        from trainables import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
