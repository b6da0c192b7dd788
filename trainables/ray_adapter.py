"""The ONE Ray adapter: a Tune function trainable around trainables.loop.Training.

The only module of the training library that imports ray; it is imported by search/ (never
by the rest of trainables/), so a Ray version bump is a one-file change here.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from trainables import checkpoints
from trainables.config import TrainConfig
from trainables.files import atomic_save
from trainables.loop import Training
from trainables.schema import FAILED, RESTORE_WARNING
from trainables.shipping import ShippedFiles, localize

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"


def restore_state(checkpoint: tune.Checkpoint | None) -> tuple[dict | None, str | None]:
    """The training state to continue from, and a warning when the newest checkpoint did not load.

    A torn or truncated `state.pt` (a crash mid-write on a shared disk, a full disk) must not fail the
    trial: the older checkpoint folders beside it (Tune keeps the last few) are tried newest first,
    then newer ones Tune had not registered yet (a driver killed before its last snapshot may point
    at a folder already rotated away); with none loadable the trial starts again from epoch 0.
    The warning names every file that failed.
    """
    if checkpoint is None:
        return None, None
    failed = []
    for candidate in [checkpoint, *sibling_checkpoints(checkpoint)]:
        path = posixpath.join(candidate.path, checkpoints.STATE_FILE)
        try:
            with candidate.as_directory() as folder:
                state = checkpoints.load(Path(folder) / checkpoints.STATE_FILE)
        except Exception as err:  # noqa: BLE001  (torch.load fails in many ways on a bad file; all mean unusable)
            failed.append(f"{path} ({_reason(err)})")
            continue
        if not failed:
            return state, None
        return state, (f"checkpoint {'; '.join(failed)} does not load; continuing from {path} "
                       f"(epoch {state.get('epoch', '?')})")
    return None, f"no checkpoint of this trial loads ({'; '.join(failed)}); the trial starts again from epoch 0"


def sibling_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoint folders: older ones newest first, then newer ones oldest first.

    Listed through the checkpoint's own filesystem (local, NFS or s3://); names are zero-padded indices.
    """
    import pyarrow.fs as pafs

    own = checkpoint.path.rstrip("/")
    try:
        infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(posixpath.dirname(own), allow_not_found=True))
    except OSError:
        return []
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
    mine = posixpath.basename(own)
    order = [n for n in reversed(names) if n < mine] + [n for n in names if n > mine]
    return [tune.Checkpoint(path=posixpath.join(posixpath.dirname(own), n), filesystem=checkpoint.filesystem)
            for n in order]


def _reason(err: BaseException) -> str:
    """One line: the exception type and the first line of its message."""
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text[:200]}"


def save_checkpoint_folder(training: Training, folder: Path) -> None:
    """Write state (to resume), last and best model files (for the final evaluation) into `folder`."""
    atomic_save(training.state_dict(), folder / checkpoints.STATE_FILE)
    for name, blob in training.model_files().items():
        atomic_save(blob, folder / name)


def train_trial(config: dict[str, Any], shipped: ShippedFiles | None = None) -> None:
    """Tune trainable: config["train"] is a full TrainConfig dict; reports metrics + a checkpoint each epoch.

    `shipped` (given with tune.with_parameters on a cluster) holds the driver machine's teacher and dataset
    files: a node that cannot see their paths reads node-local copies. A non-finite loss ends the trial with
    one last result flagged FAILED (and the search's metric as NaN, which Tune requires in every result):
    the state it would be retried from gives the same loss.
    """
    trial = config.get("trial", {})
    cfg = TrainConfig.from_dict(localize(config["train"], shipped))
    every = int(trial.get("checkpoint_every", 1))
    state, warning = restore_state(tune.get_checkpoint())
    if warning:
        log.warning(warning)
    training = Training(cfg, state)
    if training.epoch:
        log.info("resumed at epoch %d of %d", training.epoch, cfg.epochs)
    extra = {RESTORE_WARNING: warning} if warning else {}
    try:
        for metrics in training:
            metrics = {**metrics, **extra}
            extra = {}
            if training.epoch % every and training.epoch != cfg.epochs:
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint_folder(training, Path(folder))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except FloatingPointError as err:
        log.error("trial failed, not retried: %s", err)
        tune.report({**extra, "epoch": training.epoch, trial.get("metric", "val_pgd_acc"): float("nan"),
                     FAILED: str(err)})
