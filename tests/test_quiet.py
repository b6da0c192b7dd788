"""search/quiet.py: the library lines a search used to print are gone by default and back with verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What a driver does, in the order the search does it: start Ray (twice: teachers, then the search),
# run a Tuner at verbose=0, create an Optuna study and a new SQLite MLflow store.
SCRIPT = r'''
import sys
from search.driver import quiet_libraries
quiet_libraries(verbose=sys.argv[1] == "true")
import ray
from ray import tune
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
def trainable(config):
    tune.report({"score": 1.0})
tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=1),
           run_config=tune.RunConfig(name="q", storage_path=sys.argv[2], verbose=0)).fit()
import optuna
optuna.create_study()
from mlflow.tracking import MlflowClient
MlflowClient(f"sqlite:///{sys.argv[2]}/mlruns.db").search_experiments()
'''

NOISE = ("authentication", "Started a local Ray instance", "Calling ray.init() again",
         "Configuration for experiment", "View detailed results here", "To visualize your results with TensorBoard",
         "Wrote the latest version of all result files", "A new study created in memory",
         "Creating initial MLflow database tables")


def run(verbose: bool, tmp: Path) -> str:
    (tmp / "script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp), "OMP_NUM_THREADS": "1"}
    for key in ("RAY_AIR_NEW_OUTPUT", "MLFLOW_LOGGING_LEVEL"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(tmp / "script.py"), str(verbose).lower(), str(tmp)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_library_noise_is_off_by_default_and_back_with_verbose(tmp_path):
    (tmp_path / "quiet").mkdir()
    (tmp_path / "verbose").mkdir()
    quiet = run(False, tmp_path / "quiet")
    assert [line for line in NOISE if line in quiet] == [], quiet
    loud = run(True, tmp_path / "verbose")
    assert [line for line in NOISE if line not in loud] == [], loud
