"""Shared pieces of the reliability suite: a quickly trained teacher, the tiny smoke settings, progress read from Tune's files.

Running the real command and reading MLflow back: tests/commands.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEACHER = "digits_cnn_medium_trades"
# The smoke profile shrunk to seconds per trial: 256 training images, 100 for validation.
TINY = ("profile=smoke", "train.train_subset=256", "train.val_size=100")


def train_teacher(path: Path) -> Path:
    """A cnn_medium digits classifier, plain CE for 150 steps (~99 % train accuracy), saved as the smoke teacher."""
    from conftest import train_digits_net

    from trainables.data import load_digits_tensors, to_float
    from trainables.models import build_model
    from trainables.teachers import save_teacher_checkpoint

    x, y, _, _ = load_digits_tensors()
    model = train_digits_net(to_float(x), y, steps=150, model=lambda: build_model("cnn_medium", 10, 1))
    return save_teacher_checkpoint(model, path, TEACHER, {})


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """teachers_dir holding the smoke profile's teacher (trained once per session, in seconds)."""
    folder = tmp_path_factory.mktemp("teachers")
    train_teacher(folder / f"{TEACHER}.pt")
    return folder


def trial_progress(experiment: Path) -> dict[str, tuple[int, bool]]:
    """trial id -> (last epoch reported, whether that result ended the trial), from Tune's result.json files.

    Cheap to read many times a second, unlike opening the MLflow store: for catching a moment mid-search.
    """
    out = {}
    for results in experiment.glob("train_trial_*/result.json"):
        last = None
        for line in results.read_text().splitlines():
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written
        if last is not None:
            out[last["trial_id"]] = (int(last.get("epoch", 0)), bool(last.get("done")))
    return out
