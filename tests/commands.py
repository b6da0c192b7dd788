"""The real commands as a user runs them (a fresh HOME, one thread per trial) and their MLflow records read back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def env(cwd: Path) -> dict:
    """One thread per trial, unbuffered output, and a fresh HOME (no ~/.ray from earlier runs: a new machine)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HOME": str(cwd / "home")}


def run_command(cwd: Path, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in cwd, to the end, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(cwd), capture_output=True,
                          text=True, timeout=timeout)


def run_search(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real search command, to the end."""
    return run_command(cwd, "search.run", *args, timeout=timeout)


def start_search(cwd: Path, *args: str, log: Path) -> subprocess.Popen:
    """The real search command in the background (start_command)."""
    return start_command(cwd, "search.run", *args, log=log)


def start_command(cwd: Path, module: str, *args: str, log: Path) -> subprocess.Popen:
    """`python -m <module> <args>` in the background, in a process group of its own (so its Ray can be cleaned up)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env(cwd), stdout=open(log, "w"),
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


SMOKE_NAME = "alpha-smoke"


def smoke_search(folder: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m search.run space=alpha profile=smoke` (6 trials of 6 epochs, the teacher trained on first use) in
    folder, and its wall time; tests/conftest.py runs it once per session for every test that reads it."""
    start = time.monotonic()
    proc = run_search(folder, "space=alpha", "profile=smoke", f"name={SMOKE_NAME}", "num_samples=6", "train.epochs=6",
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, time.monotonic() - start


def wait_for(predicate, timeout: float, what: str, every_s: float = 1.0) -> None:
    """Poll predicate(); errors count as not yet (the store is being created by the command under test), and the
    last one is named if the wait times out, so a bug in the predicate does not pass for a slow command."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as err:  # noqa: BLE001  (half-written SQLite files raise many kinds)
            last_error = err
        time.sleep(every_s)
    pytest.fail(f"timed out waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))
