"""The ONE Ray adapter: a Tune function trainable around trainables.loop.Training.

The only module of the training library that imports ray; it is imported by search/ (never
by the rest of trainables/), so a Ray version bump is a one-file change here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from trainables import checkpoints
from trainables.config import TrainConfig
from trainables.loop import Training

log = logging.getLogger(__name__)


def restore_state(checkpoint: tune.Checkpoint | None) -> dict | None:
    """The training state saved in a Tune checkpoint, or None for a fresh trial."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return checkpoints.load(Path(folder) / checkpoints.STATE_FILE)


def save_checkpoint_folder(training: Training, folder: Path) -> None:
    """Write state (to resume), last and best model files (for the final evaluation) into `folder`."""
    checkpoints.atomic_save(training.state_dict(), folder / checkpoints.STATE_FILE)
    for name, blob in training.model_files().items():
        checkpoints.atomic_save(blob, folder / name)


def train_trial(config: dict[str, Any]) -> None:
    """Tune trainable: config["train"] is a full TrainConfig dict; reports metrics + a checkpoint each epoch."""
    cfg = TrainConfig.from_dict(config["train"])
    every = int(config.get("trial", {}).get("checkpoint_every", 1))
    training = Training(cfg, restore_state(tune.get_checkpoint()))
    if training.epoch:
        log.info("resumed at epoch %d of %d", training.epoch, cfg.epochs)
    for metrics in training:
        if training.epoch % every and training.epoch != cfg.epochs:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint_folder(training, Path(folder))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
