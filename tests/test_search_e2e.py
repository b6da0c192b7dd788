"""The real command end to end on the smoke profile: search, MLflow records, teachers.

Interrupts, resumes and failing trials are in tests/reliability/.
"""

from pathlib import Path

import pytest
from commands import run_command, runs_of

pytestmark = pytest.mark.slow


def trial_runs(folder: Path, name: str) -> tuple:
    """(client, parent runs, trial runs as a list) of the search `name` recorded in folder/mlruns.db."""
    c, parents, children = runs_of(folder / "mlruns.db", name)
    return c, parents, list(children.values())


@pytest.fixture(scope="module")
def workdir(smoke_run) -> Path:
    return smoke_run[0]


@pytest.fixture(scope="module")
def smoke_search(smoke_run) -> tuple:
    """(completed process, seconds) of the session's smoke search (tests/commands.smoke_search)."""
    return smoke_run[1:]


def test_smoke_search_records_parent_and_children_and_asha_stops_some(smoke_search, workdir):
    proc, seconds = smoke_search
    print(f"\nsmoke search took {seconds:.0f} s\n{proc.stdout}")  # the figure to watch; benchmarks/search_time times it
    assert "top trials by val_pgd_acc" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert (workdir / "teachers" / "digits_cnn_medium_trades.pt").exists()  # trained on first use
    c, parents, children = trial_runs(workdir, "alpha-smoke")
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


def test_smoke_search_opens_on_its_runs_in_mlflow_and_its_study_has_pruned_trials(smoke_search, workdir):
    import json

    import optuna
    from optuna.trial import TrialState

    proc, _ = smoke_search
    c, (parent,), children = trial_runs(workdir, "alpha-smoke")
    exp = c.get_experiment_by_name("alpha-smoke")
    # MLflow: model development, the stored runs view, and the command's link straight to it
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.rslad"])
    assert view["selectedColumns"][:2] == ["params.`search.alpha_ratio`", "metrics.`best_val_pgd_acc`"]
    assert (f"then open http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?"
            "workflowType=machine_learning&viewStateShareKey=rslad") in proc.stdout
    # the live console's last block (stdout is not a terminal here: blocks are appended)
    assert "alpha-smoke: 6/6 done (" in proc.stdout and "best val_pgd_acc " in proc.stdout
    # trial runs named after their searched value, id and ending; the parent with the trials' own metric names
    for run in children:
        tags, ratio = run.data.tags, float(run.data.params["search.alpha_ratio"])
        ending = "finished" if tags["rslad.status"] == "finished" else f"stopped {tags['rslad.epochs_run']}/6"
        assert run.info.run_name == f"alpha_ratio={ratio:.4g} · {tags['ray.trial_id']} · {ending}"
    winner = next(r for r in children if r.data.tags["ray.trial_id"] == parent.data.tags["rslad.best_trial"])
    assert winner.data.metrics["best_val_pgd_acc"] == max(r.data.metrics["best_val_pgd_acc"] for r in children)
    assert parent.data.metrics["best_val_pgd_acc"] == winner.data.metrics["best_val_pgd_acc"]
    assert parent.data.metrics["best_val_clean_acc"] == winner.data.metrics["best_val_clean_acc"]
    assert parent.data.tags["winner.alpha_ratio"] == winner.data.params["search.alpha_ratio"]
    assert parent.data.tags["rslad.status"] == "finished" and not any("/" in k for k in parent.data.metrics)
    # Optuna: the study beside the tracking store, one trial per Ray trial, ASHA's stops PRUNED
    study = optuna.load_study(study_name="alpha-smoke", storage=f"sqlite:///{workdir}/optuna.db")
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert sorted(by_ray) == sorted(r.data.tags["ray.trial_id"] for r in children)
    for run in children:
        trial = by_ray[run.data.tags["ray.trial_id"]]
        assert trial.state == {"finished": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED}[
            run.data.tags["rslad.status"]]
        assert sorted(trial.intermediate_values) == list(range(1, int(run.data.tags["rslad.epochs_run"]) + 1))


def test_best_smoke_trial_clearly_beats_a_natural_student(workdir, smoke_search):
    from trainables.config import TrainConfig
    from trainables.loop import fit

    _, _, children = trial_runs(workdir, "alpha-smoke")
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
    from search.tracking import fetch_registered
    from trainables.teachers import build_teacher

    dest = tmp_path / "digits_cnn_medium_trades.pt"
    assert fetch_registered("digits_cnn_medium_trades", dest, f"sqlite:///{workdir}/mlruns.db")
    teacher = build_teacher("digits_cnn_medium_trades", dest, num_classes=10, in_channels=1)
    assert not teacher.training
    assert not fetch_registered("digits_cnn_large_trades", tmp_path / "x.pt", f"sqlite:///{workdir}/mlruns.db")


def test_teachers_command_trains_only_what_is_missing(tmp_path):
    args = ("profile=smoke", "teachers.names=[digits_cnn_small_trades]", "teachers.epochs=1", "tracking.enabled=false")
    first = run_command(tmp_path, "search.teachers", *args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / "teachers" / "digits_cnn_small_trades.pt").exists()
    again = run_command(tmp_path, "search.teachers", *args, timeout=120)
    assert again.returncode == 0 and "already has weights" in again.stdout
    bad = run_command(tmp_path, "search.teachers", "profile=smoke", "teachers.names=[digits_cnn_huge]", timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown teacher 'digits_cnn_huge'; known:")


@pytest.mark.parametrize("dry_run", ["false", "true"])
def test_teachers_command_refuses_a_teacher_of_another_dataset_before_ray(tmp_path, dry_run):
    proc = run_command(tmp_path, "search.teachers", "profile=smoke", "teachers.names=[wrn34_10_trades]",
                       f"dry_run={dry_run}", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: teacher 'wrn34_10_trades' is for dataset 'cifar10', the config trains on 'digits'; "
        "pick a profile or train.dataset that matches"]
    assert not (tmp_path / "home" / ".ray").exists() and not (tmp_path / "ray_results").exists()
