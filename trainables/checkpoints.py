"""Saving and loading training state and model files, weights_only-safe and atomic."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from trainables.config import TrainConfig
from trainables.models import build_model

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
LAST_MODEL_FILE = "last_model.pt"


def load(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True onto the CPU (never unpickles arbitrary objects)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_file(model_state: dict, cfg: TrainConfig, arch: dict, epoch: int, metrics: dict) -> dict:
    """A self-describing model file: weights plus what is needed to rebuild and evaluate them."""
    return {"model": model_state, "config": cfg.to_dict(), "arch": arch, "epoch": epoch,
            "metrics": {k: float(v) for k, v in metrics.items()}}


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a student from a model file: returns (model in eval mode on device, its TrainConfig, the file's metadata)."""
    blob = load(path)
    cfg = TrainConfig.from_dict(blob["config"])
    arch = blob["arch"]
    model = build_model(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"])
    model.load_state_dict(blob["model"])
    model.to(device).eval()
    return model, cfg, {k: blob[k] for k in ("epoch", "metrics", "arch")}
