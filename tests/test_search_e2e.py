"""The real command end to end on the smoke profile: search, MLflow records, teachers.

Interrupts, resumes and failing trials are in tests/reliability/.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "profile=smoke", *args]


def env() -> dict:
    # Tests own the machine's two cores: one thread per trial, two trials at once.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def client(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{folder}/mlruns.db")


def runs_of(folder: Path, name: str) -> tuple:
    c = client(folder)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("rslad.role") == "search"]
    children = [r for r in runs if r.data.tags.get("rslad.role") == "trial"]
    return c, parents, children


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def smoke_search(workdir):
    """`python -m search.run space=alpha profile=smoke` (6 trials of 6 epochs), teacher trained on first use."""
    start = time.monotonic()
    proc = subprocess.run(search_cmd("space=alpha", "name=alpha-smoke", "num_samples=6", "train.epochs=6"),
                          cwd=workdir, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, time.monotonic() - start


def test_smoke_search_records_parent_and_children_and_asha_stops_some(smoke_search, workdir):
    proc, seconds = smoke_search
    print(f"\nsmoke search took {seconds:.0f} s\n{proc.stdout}")
    assert seconds < 300
    assert "top trials by val_pgd_acc" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert (workdir / "teachers" / "digits_cnn_medium_trades.pt").exists()  # trained on first use
    c, parents, children = runs_of(workdir, "alpha-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["rslad.space"] == "alpha" and parents[0].data.tags["git.revision"]
    assert len(children) == 6 and len({r.data.tags["ray.trial_id"] for r in children}) == 6
    statuses = [r.data.tags["rslad.status"] for r in children]
    assert set(statuses) <= {"finished", "stopped_early"} and "stopped_early" in statuses and "finished" in statuses
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_pgd_acc")]
        assert steps == list(range(1, int(run.data.tags["rslad.epochs_run"]) + 1))
        assert float(run.data.params["alpha"]) == pytest.approx(
            float(run.data.params["search.alpha_ratio"]) / (1 + float(run.data.params["search.alpha_ratio"])))
        assert Path(run.data.tags["rslad.checkpoint_dir"], "best_model.pt").exists()
    # the teacher is registered in the MLflow model registry
    assert c.search_model_versions("name='rslad-teacher-digits_cnn_medium_trades'")


def test_best_smoke_trial_clearly_beats_a_natural_student(workdir, smoke_search):
    from trainables.config import TrainConfig
    from trainables.loop import fit

    _, _, children = runs_of(workdir, "alpha-smoke")
    best = max(float(r.data.metrics["best_val_pgd_acc"]) for r in children)
    train = {k: v for k, v in children[0].data.params.items() if not k.startswith("search.")}
    cfg = TrainConfig.from_dict({**{k: _parse(v) for k, v in train.items()}, "method": "natural", "teacher": "none"})
    natural = max(m["val_pgd_acc"] for m in fit(cfg))
    print(f"\nbest RSLAD trial val PGD {best:.3f} vs natural student {natural:.3f}")
    assert best > natural + 0.2


def _parse(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_registered_teacher_is_fetched_from_mlflow(workdir, smoke_search, tmp_path):
    from search.teachers import fetch_registered
    from trainables.teachers import build_teacher

    dest = tmp_path / "digits_cnn_medium_trades.pt"
    assert fetch_registered("digits_cnn_medium_trades", dest, f"sqlite:///{workdir}/mlruns.db")
    teacher = build_teacher("digits_cnn_medium_trades", dest, num_classes=10, in_channels=1)
    assert not teacher.training
    assert not fetch_registered("digits_cnn_large_trades", tmp_path / "x.pt", f"sqlite:///{workdir}/mlruns.db")


def test_teachers_command_trains_only_what_is_missing(tmp_path):
    cmd = [sys.executable, "-m", "search.teachers", "profile=smoke", "teachers.names=[digits_cnn_small_trades]",
           "teachers.epochs=1", "tracking.enabled=false"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / "teachers" / "digits_cnn_small_trades.pt").exists()
    again = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already has weights" in again.stdout
    bad = subprocess.run([*cmd[:3], "teachers.names=[digits_cnn_huge]"], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown teacher 'digits_cnn_huge'; known:")
