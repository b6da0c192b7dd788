"""The pieces that make faults lose nothing, each on its own (no Ray cluster started)."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from trainables import checkpoints
from trainables.files import atomic_save


# --- checkpoints: a torn newest one falls back -----------------------------------------------------
def checkpoint_folders(trial: Path, epochs: list[int]) -> list[Path]:
    """checkpoint_00000<i> folders as Tune leaves them, each with a state.pt saying its epoch."""
    folders = []
    for i in epochs:
        folder = trial / f"checkpoint_{i:06d}"
        atomic_save({"epoch": i + 1}, folder / checkpoints.STATE_FILE)
        folders.append(folder)
    return folders


def tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_one_naming_the_file(tmp_path):
    from ray import tune

    from trainables.ray_adapter import restore_state

    c1, c2, c3 = checkpoint_folders(tmp_path, [1, 2, 3])
    tear(c3 / "state.pt")
    state, warning = restore_state(tune.Checkpoint(str(c3)))
    assert state == {"epoch": 3}
    assert warning.startswith(f"checkpoint {c3}/state.pt (") and "does not load" in warning
    assert warning.endswith(f"continuing from {c2}/state.pt (epoch 3)")
    # the intact newest one is used as it is, without a word
    assert restore_state(tune.Checkpoint(str(c2))) == ({"epoch": 3}, None)


def test_older_checkpoints_are_tried_before_newer_unregistered_ones(tmp_path):
    from ray import tune

    from trainables.ray_adapter import restore_state

    c1, c2, c3 = checkpoint_folders(tmp_path, [1, 2, 3])
    tear(c2 / "state.pt")
    assert restore_state(tune.Checkpoint(str(c2)))[0] == {"epoch": 2}  # c1, not the newer c3
    tear(c1 / "state.pt")
    assert restore_state(tune.Checkpoint(str(c2)))[0] == {"epoch": 4}  # then c3
    missing = tmp_path / "checkpoint_000000"  # rotated away after the last snapshot of a killed driver
    assert restore_state(tune.Checkpoint(str(missing)))[0] == {"epoch": 4}


def test_no_loadable_checkpoint_restarts_the_trial_with_a_warning(tmp_path):
    from ray import tune

    from trainables.ray_adapter import restore_state

    (c1,) = checkpoint_folders(tmp_path, [1])
    tear(c1 / "state.pt")
    state, warning = restore_state(tune.Checkpoint(str(c1)))
    assert state is None
    assert warning.startswith(f"no checkpoint of this trial loads ({c1}/state.pt (")
    assert warning.endswith("the trial starts again from epoch 0")


# --- ASHA's rung records across a resume --------------------------------------------------------
class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def asha():
    from search.study import ResumableASHA

    return ResumableASHA(time_attr="schedule_pct", metric="val_pgd_acc", mode="max", max_t=100,
                         grace_period=25, reduction_factor=2)


def report(scheduler, trial, pct: float, acc: float) -> str:
    return scheduler.on_trial_result(None, trial, {"schedule_pct": pct, "val_pgd_acc": acc})


def test_rung_records_survive_a_resume_and_keep_judging_trials():
    from search.study import SchedulerState

    before = asha()
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for t in trials:
        before.on_trial_add(None, t)
    for t, acc in zip(trials[:3], (0.6, 0.5, 0.4)):
        report(before, t, 25, acc)
    # Tune pickles the callback with the experiment snapshot; on resume it builds a fresh scheduler
    # from tuner.pkl and hands the callback state back before re-adding the trials
    saved = pickle.loads(pickle.dumps(SchedulerState(before).get_state()))
    after = asha()
    SchedulerState(after).set_state(saved)
    assert after.rung_counts() == before.rung_counts() == {"100": 0, "50": 0, "25": 3}
    for t in trials:
        after.on_trial_add(None, t)
    assert report(after, trials[3], 25, 0.3) == "STOP"  # below the records made before the resume
    fresh = asha()
    fresh.on_trial_add(None, trials[3])
    assert report(fresh, trials[3], 25, 0.3) == "CONTINUE"  # what an empty rung would have said


# --- the searcher and the tracker after a failure and a resume -------------------------------------
def test_a_flagged_failure_reaches_optuna_as_fail_not_as_a_score():
    import optuna

    from search.study import StudySearch
    from trainables.ray_adapter import FAILED

    searcher = StudySearch(lambda trial: {"x": trial.suggest_float("x", 0, 1)}, "m", "max", study_name="s",
                           storage_url=None, seed=0)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"m": float("nan"), FAILED: "non-finite training loss in epoch 1"})
    searcher.suggest("b")
    searcher.on_trial_complete("b", {"m": 0.5})
    states = [t.state for t in searcher.study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_a_restored_tracker_writes_where_the_current_command_says(tmp_path, monkeypatch):
    from search import tracking
    from search.tracking import MLflowTracker, artifact_location, use_current_command
    from trainables.schema import STORAGE

    monkeypatch.setattr(tracking, "_CURRENT", {})  # this test's command only, gone afterwards

    old = MLflowTracker("sqlite:////old/place.db", "exp", {STORAGE: "/old/runs/exp"}, {}, {})
    blob = pickle.dumps(old)  # as Tune keeps it in the search's storage
    use_current_command("exp", f"sqlite:///{tmp_path}/m.db", {STORAGE: f"{tmp_path}/runs/exp"})
    restored = pickle.loads(blob)
    assert restored.tracking_uri == f"sqlite:///{tmp_path}/m.db"
    assert restored.parent_tags[STORAGE] == f"{tmp_path}/runs/exp"
    assert artifact_location(f"sqlite:///{tmp_path}/m.db", "exp") == (tmp_path / "mlartifacts" / "exp").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "exp") is None


def test_new_experiments_keep_artifacts_beside_the_database_not_in_the_cwd(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from search.tracking import get_or_create_experiment

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path}/db/m.db"
    (tmp_path / "db").mkdir()
    c = MlflowClient(uri)
    exp_id = get_or_create_experiment(c, "teachers", uri)
    run = c.create_run(exp_id)
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    c.log_artifact(run.info.run_id, str(weights), "teacher")
    assert (tmp_path / "db" / "mlartifacts" / "teachers" / run.info.run_id / "artifacts" / "teacher" / "w.pt").is_file()
    assert list(elsewhere.iterdir()) == []


# --- storage is private, names are plain ---------------------------------------------------------
def test_storage_folders_are_created_private_and_foreign_writable_ones_are_refused(tmp_path):
    from search.config import SearchInputError
    from search.storage import check_trusted, make_private

    exp = tmp_path / "runs" / "exp"
    make_private(str(exp))
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o700 == stat.S_IMODE(exp.stat().st_mode)
    check_trusted(str(exp))
    (exp / "tuner.pkl").write_bytes(b"")
    os.chmod(exp / "tuner.pkl", 0o666)
    with pytest.raises(SearchInputError, match=r"refusing to resume from .*tuner.pkl: others can write it \(mode 666"):
        check_trusted(str(exp))
    os.chmod(exp / "tuner.pkl", 0o644)
    os.chmod(tmp_path / "runs", 0o1777)  # a sticky folder like /tmp: others cannot replace what is ours
    check_trusted(str(exp))


def test_record_differences_name_each_key_with_both_values():
    from search.storage import record_differences

    assert record_differences({"space": "alpha", "train.lr": 0.05, "seed": 0},
                       {"space": "epochs", "train.lr": 0.1, "seed": 0}) == [
        "space (alpha -> epochs)", "train.lr (0.05 -> 0.1)"]


# --- stop signals -------------------------------------------------------------------------------
@pytest.fixture
def signal_handlers():
    """Install the driver's handlers for one test and put the process's own back afterwards."""
    import signal

    from search import driver

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    tune_switch = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    driver._received.clear()
    driver.install()
    yield driver
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    driver._received.clear()
    if tune_switch is None:  # install() switched Tune's handler off for this process: undo that
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    else:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_switch


def test_sigterm_inside_tunes_loop_asks_tune_to_stop_and_exits_143(signal_handlers):
    import signal

    from search.cli import run_cli

    asked = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))  # what Tune installs in fit()

    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        return signal_handlers.exit_code() if signal_handlers.received() else 0

    assert run_cli(main, []) == 143
    assert asked == [signal.SIGTERM] and signal_handlers.received() == "SIGTERM"


def test_a_signal_before_tunes_loop_stops_at_once_with_one_line(signal_handlers, capsys):
    import signal

    from search.cli import run_cli

    def main(argv):
        os.kill(os.getpid(), signal.SIGINT)  # e.g. while Ray starts or teachers train
        raise AssertionError("not reached")

    assert run_cli(main, []) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "stopped by SIGINT before the search could save its state; a search that had started continues from its "
        "last saved state with resume=true"]


def test_the_parent_run_follows_the_winner_of_a_resumed_search(tmp_path):
    from types import SimpleNamespace

    from search.tracking import MLflowTracker

    def trial(tid: str, best: float, **params) -> SimpleNamespace:
        return SimpleNamespace(trial_id=tid, status="TERMINATED", config={**params, "train": {"epochs": 4}},
                               last_result={"epoch": 4, "best_val_pgd_acc": best, "best_val_clean_acc": 0.9,
                                            "best_epoch": 3})

    tracker = MLflowTracker(f"sqlite:///{tmp_path}/m.db", "exp", {"rslad.metric": "val_pgd_acc"}, {}, {},
                            searched=["method", "trades_beta"])
    tracker.setup()
    first = [trial("a", 0.5, method="trades", trades_beta=6.0), trial("b", 0.4, method="sat")]
    tracker._finish_parent(first, "KILLED")  # interrupted: the winner so far
    tracker._finish_parent([*first, trial("c", 0.6, method="sat")], "FINISHED")  # after the resume
    run = tracker.client.get_run(tracker.parent_id)
    assert run.data.metrics == {"best_val_pgd_acc": 0.6, "best_val_clean_acc": 0.9, "best_epoch": 3.0}
    assert {k: v for k, v in run.data.tags.items() if k.startswith(("winner.", "rslad.best", "rslad.status"))} == {
        "winner.method": "sat", "rslad.best_trial": "c", "rslad.status": "finished"}  # no stale winner.trades_beta
    exp = tracker.client.get_experiment_by_name("exp")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
