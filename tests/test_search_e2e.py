"""The real command end to end on the smoke profile: search, MLflow records, resume after an interrupt."""

import os
import signal
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


def test_resume_after_interrupt_reattaches_runs_and_reruns_nothing(workdir, smoke_search):
    name = "resume-smoke"
    args = ("space=rsl_source", f"name={name}", "num_samples=3", "max_concurrent=1", "scheduler=none",
            "train.epochs=5")
    proc = subprocess.Popen(search_cmd(*args), cwd=workdir, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # interrupt once one trial finished and the next is mid-way
            time.sleep(1)
            if not (workdir / "mlruns.db").exists():
                continue
            c, _, children = runs_of(workdir, name)
            done = [r for r in children if r.data.tags.get("rslad.status") == "finished"]
            mid = [r for r in children if r.data.tags.get("rslad.status") == "running"
                   and int(r.data.tags.get("rslad.epochs_run", 0)) >= 2]
            if done and mid:
                break
        else:
            pytest.fail("search never reached the point to interrupt")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    c, parents, children = runs_of(workdir, name)
    before = {r.data.tags["ray.trial_id"]: r for r in children}
    finished_before = {t for t, r in before.items() if r.data.tags["rslad.status"] == "finished"}
    assert finished_before and len(before) < 4

    resumed = subprocess.run(search_cmd(*args, "resume=true"), cwd=workdir, env=env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    c, parents, children = runs_of(workdir, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["ray.trial_id"] for r in children]
    assert len(ids) == len(set(ids)) == 3, "one MLflow run per trial, no duplicates"
    assert all(r.info.status == "FINISHED" and r.data.tags["rslad.status"] == "finished" for r in children)
    for run in children:
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_pgd_acc")]
        # each epoch logged once: finished trials did not rerun, the interrupted one went on from its checkpoint
        assert steps == [1, 2, 3, 4, 5], (run.data.tags["ray.trial_id"], steps)
    for trial_id in finished_before:
        assert before[trial_id].info.run_id in {r.info.run_id for r in children}


def test_a_failing_trial_is_recorded_with_its_reason(workdir, smoke_search):
    name = "fails-smoke"
    proc = subprocess.run(search_cmd("space=alpha", f"name={name}", "num_samples=1", "train.epochs=2",
                                     "train.lr=1e12", "trial.max_failures=0"),
                          cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 trial(s) failed" in proc.stdout
    _, parents, children = runs_of(workdir, name)
    assert len(children) == 1 and children[0].info.status == "FAILED"
    assert children[0].data.tags["rslad.status"] == "failed"
    assert "non-finite training loss" in children[0].data.tags["rslad.error"]


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
