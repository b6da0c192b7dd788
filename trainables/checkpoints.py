"""Saving and loading training state and model files, weights_only-safe and atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import torch.nn as nn

from trainables.config import TrainConfig

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
LAST_MODEL_FILE = "last_model.pt"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """write(f) into a temporary file beside path, then rename: readers see the old file or the whole new one, never part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: writers of the same file at once (trials sharing soft labels) never share one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through atomic_write, so a crash never leaves a half-written file under `path`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True onto the CPU (never unpickles arbitrary objects)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_file(model_state: dict, cfg: TrainConfig, arch: dict, epoch: int, metrics: dict) -> dict:
    """A self-describing model file: weights plus what is needed to rebuild and evaluate them."""
    return {"model": model_state, "config": cfg.to_dict(), "arch": arch, "epoch": epoch,
            "metrics": {k: float(v) for k, v in metrics.items()}}


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a student from a model file: returns (model in eval mode on device, its TrainConfig, the file's metadata)."""
    from trainables.models import build_model

    blob = load(path)
    cfg = TrainConfig.from_dict(blob["config"])
    arch = blob["arch"]
    model = build_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    model.load_state_dict(blob["model"])
    model.to(device).eval()
    return model, cfg, {k: blob[k] for k in ("epoch", "metrics", "arch")}
