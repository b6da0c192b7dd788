"""Shared pieces of the reliability suite: a quickly trained teacher, the real command, MLflow read-back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

TEACHER = "digits_cnn_medium_trades"
# The smoke profile shrunk to seconds per trial: 256 training images, 100 for validation.
TINY = ("profile=smoke", "train.train_subset=256", "train.val_size=100")


def train_teacher(path: Path) -> Path:
    """A cnn_medium digits classifier, plain CE for 150 steps (~99 % train accuracy), saved as the smoke teacher."""
    from sklearn.datasets import load_digits

    from trainables.models import build_model
    from trainables.teachers import save_teacher_checkpoint

    torch.manual_seed(0)
    digits = load_digits()
    # the same uint8 grid the data path uses (0..16 -> 0..255), scaled to [0, 1]
    x = torch.tensor(np.rint(digits.images * 255 / 16) / 255, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    model = build_model("cnn_medium", num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(y), (128,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_teacher_checkpoint(model.eval(), path, TEACHER, {})


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """teachers_dir holding the smoke profile's teacher (trained once per session, in seconds)."""
    folder = tmp_path_factory.mktemp("teachers")
    train_teacher(folder / f"{TEACHER}.pt")
    return folder


def env(cwd: Path) -> dict:
    """One thread per trial, unbuffered output, and a fresh HOME (no ~/.ray from earlier runs: a new machine)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HOME": str(cwd / "home")}


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", *args]


def run_search(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command, to the end."""
    return subprocess.run(search_cmd(*args), cwd=cwd, env=env(cwd), capture_output=True, text=True,
                          timeout=timeout)


def start_search(cwd: Path, *args: str, log: Path) -> subprocess.Popen:
    """The real command in the background, in a process group of its own (so its Ray can be cleaned up)."""
    return subprocess.Popen(search_cmd(*args), cwd=cwd, env=env(cwd), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def client(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{db}")


def runs_of(db: Path, name: str, c=None) -> tuple:
    """(client, parent runs, trial runs by trial id) of experiment `name`; empty when there is none yet.

    Pass the client of an earlier call when polling: opening the store takes most of a second.
    """
    if not db.exists():
        return None, [], {}
    c = c or client(db)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("rslad.role") == "search"]
    children = {r.data.tags["ray.trial_id"]: r for r in runs if r.data.tags.get("rslad.role") == "trial"}
    return c, parents, children


def steps(c, run) -> list[int]:
    """The epochs logged for val_pgd_acc, in order."""
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_pgd_acc"))


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


def wait_for(predicate, timeout: float, what: str, every_s: float = 1.0) -> None:
    """Poll predicate() (errors from a half-written SQLite file count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001  (the store is being created by the command under test)
            pass
        time.sleep(every_s)
    pytest.fail(f"timed out waiting for {what}")
