"""search/study.py: the study in a database, ASHA-stopped trials as PRUNED (and TPE ranking them so), resume.

The searcher is driven through Tune's searcher interface (suggest / on_trial_result /
on_trial_complete / save / restore) with fake results, the way Tune's controller calls it;
no Ray cluster is started.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.config import SearchInputError
from search.storage import study_storage_url
from search.study import ORPHAN_REASON, RAY_TRIAL_ATTR, StudySearch, check_new_study, ran_whole_schedule

EPOCHS = 4


def space(trial) -> dict:
    """A define-by-run space like the compiled ones (module level: searchers are pickled)."""
    trial.suggest_float("alpha_ratio", 0.1, 10.0, log=True)
    return {}


def make(url: str | None, name: str = "alpha-test", points=None, seed: int = 0) -> StudySearch:
    return StudySearch(space, "val_pgd_acc", "max", study_name=name, storage_url=url, seed=seed,
                       points_to_evaluate=points)


def run_trial(searcher, trial_id: str, values: list[float], epochs: int = EPOCHS, error: bool = False) -> None:
    """Results per epoch as Tune's controller passes them: every one but the last to on_trial_result, the last
    only to on_trial_complete (ASHA stop when len(values) < epochs); a failed trial ends with error=True only."""
    results = [{"val_pgd_acc": value, "epoch": epoch, "training_iteration": epoch,
                "schedule_pct": 100.0 * epoch / epochs} for epoch, value in enumerate(values, 1)]
    for result in results if error else results[:-1]:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=None if error else results[-1], error=error)


# Two trials run their whole schedule; two fast starters are stopped by ASHA at 25 % and 50 %, one with a
# higher truncated score than any finished trial; one fails.
FINISHED = {"t1": [0.30, 0.40, 0.45, 0.50], "t2": [0.35, 0.45, 0.55, 0.60]}
STOPPED = {"t3": [0.70], "t4": [0.10, 0.20]}


def feed(searcher) -> None:
    for tid in ("t1", "t2", "t3", "t4", "t5"):
        searcher.suggest(tid)
    for tid, values in {**FINISHED, **STOPPED}.items():
        run_trial(searcher, tid, values)
    run_trial(searcher, "t5", [0.2], error=True)


def by_ray_id(study) -> dict:
    return {t.user_attrs[RAY_TRIAL_ATTR]: t for t in study.get_trials()}


def test_study_lives_beside_the_tracking_store_or_in_local_storage(tmp_path):
    assert study_storage_url(f"sqlite:///{tmp_path}/mlruns.db", "s3://b/runs") == f"sqlite:///{tmp_path}/optuna.db"
    assert study_storage_url("http://127.0.0.1:5000", str(tmp_path / "rr")) == f"sqlite:///{tmp_path}/rr/optuna.db"
    assert study_storage_url(None, f"file://{tmp_path}") == f"sqlite:///{tmp_path}/optuna.db"
    assert study_storage_url("http://h:5000", "s3://bucket/runs") is None
    assert study_storage_url("http://h:5000", "s3://b", explicit="postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(SearchInputError, match="optuna.storage='optuna.db' is not a database URL"):
        study_storage_url(None, "x", explicit="optuna.db")


def test_stopped_trials_are_pruned_with_their_intermediate_values_and_failures_fail(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    feed(make(url))
    # A separate reader, as optuna-dashboard would open it.
    trials = by_ray_id(optuna.load_study(study_name="alpha-test", storage=url))
    assert {tid: t.state for tid, t in trials.items()} == {
        "t1": TrialState.COMPLETE, "t2": TrialState.COMPLETE, "t3": TrialState.PRUNED, "t4": TrialState.PRUNED,
        "t5": TrialState.FAIL}
    assert trials["t2"].value == 0.60 and trials["t2"].intermediate_values == {1: 0.35, 2: 0.45, 3: 0.55, 4: 0.60}
    assert trials["t4"].intermediate_values == {1: 0.10, 2: 0.20}
    assert trials["t4"].value == 0.20  # Optuna gives a pruned trial its last intermediate value
    assert trials["t3"].intermediate_values == {1: 0.70} and trials["t5"].value is None
    assert all("alpha_ratio" in t.params for t in trials.values())
    assert optuna.load_study(study_name="alpha-test", storage=url).metric_names == ["val_pgd_acc"]


def test_tpe_ranks_stopped_fast_starters_below_finished_trials_unlike_rays_stock_searcher(tmp_path):
    ours = make(f"sqlite:///{tmp_path}/optuna.db")
    feed(ours)
    stock = OptunaSearch(space=space, metric="val_pgd_acc", mode="max", seed=0)
    for tid in ("t1", "t2", "t3", "t4", "t5"):
        stock.suggest(tid)
        stock._ot_trials[tid].set_user_attr(RAY_TRIAL_ATTR, tid)
    for tid, values in {**FINISHED, **STOPPED}.items():
        run_trial(stock, tid, values)
    run_trial(stock, "t5", [0.2], error=True)

    def good_group(study) -> set[str]:
        """The trials TPE's l(x) (the "good" density) is built from, with 2 good trials."""
        usable = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        below, _ = _split_trials(study, usable, n_below=2)
        return {t.user_attrs[RAY_TRIAL_ATTR] for t in below}

    # Ray's searcher tells Optuna the 25 % score 0.70 is a final result: the fast starter leads TPE.
    assert good_group(stock._ot_study) == {"t3", "t2"}
    assert {t.state for t in stock._ot_study.get_trials()} == {TrialState.COMPLETE, TrialState.FAIL}
    # Ours: the finished trials are the good group; among the stopped ones, the one stopped later ranks first.
    assert good_group(ours.study) == {"t1", "t2"}
    usable = ours.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    below, above = _split_trials(ours.study, usable, n_below=3)
    assert {t.user_attrs[RAY_TRIAL_ATTR] for t in below} == {"t1", "t2", "t4"}


def test_a_trial_ending_with_a_non_finite_metric_fails(tmp_path):
    # The trainable ends a trial whose loss went non-finite with one last result: metric NaN, a reason.
    searcher = make(f"sqlite:///{tmp_path}/optuna.db")
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_pgd_acc": 0.3, "epoch": 1, "schedule_pct": 25.0})
    searcher.on_trial_complete("a", result={"val_pgd_acc": float("nan"), "epoch": 1, "failed_reason": "nan loss"})
    (trial,) = searcher.study.get_trials()
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {1: 0.3}


def test_ran_whole_schedule_reads_schedule_pct_or_epochs():
    assert ran_whole_schedule({"schedule_pct": 100.0}) and not ran_whole_schedule({"schedule_pct": 75.0})
    assert not ran_whole_schedule({"epoch": 2, "config/train/epochs": 8})
    assert ran_whole_schedule({"epoch": 8, "config": {"train": {"epochs": 8}}})
    assert ran_whole_schedule({"val_pgd_acc": 0.3})  # nothing to tell by: as Ray would


def test_constructing_a_searcher_touches_no_database(tmp_path):
    # On resume the driver builds the objects again but Tune restores its own pickled searcher.
    make(f"sqlite:///{tmp_path}/optuna.db", points=[{"alpha_ratio": 5.0}])
    assert not (tmp_path / "optuna.db").exists()


def test_resume_continues_the_same_study_without_duplicates_or_orphans(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    points = [{"alpha_ratio": 5.0}, {"alpha_ratio": 1.0}]
    searcher = make(url, points=points)
    tuner_pkl = pickle.dumps(searcher)  # Tune pickles the searcher into tuner.pkl before the first trial
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)
    run_trial(searcher, "a", [0.3, 0.4, 0.5, 0.6])
    run_trial(searcher, "b", [0.1])  # ASHA-stopped
    searcher.on_trial_result("c", {"val_pgd_acc": 0.2, "epoch": 1, "schedule_pct": 25.0})
    state = tmp_path / "searcher-state.pkl"
    searcher.save(str(state))  # Tune's periodic experiment checkpoint
    orphan = searcher.suggest("d")  # suggested after the last checkpoint, then the driver is killed

    # Tuner.restore: unpickle tuner.pkl's searcher, then restore the saved searcher state.
    resumed = pickle.loads(tuner_pkl)
    resumed.restore(str(state))
    # Trial c continues from its checkpoint and reports its last epoch again, then finishes.
    run_trial(resumed, "c", [0.2, 0.3, 0.4, 0.5])
    # The sampler's random state came back with it: the next suggestion is the one the orphan got.
    assert resumed.suggest("e") == orphan

    trials = by_ray_id(optuna.load_study(study_name="alpha-test", storage=url))
    assert sorted(trials) == ["a", "b", "c", "d", "e"]  # 2 enqueued points used once, nothing duplicated
    assert trials["a"].params == points[0] and trials["b"].params == points[1]
    assert trials["b"].state == TrialState.PRUNED and trials["c"].state == TrialState.COMPLETE
    assert trials["c"].intermediate_values == {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}
    assert trials["d"].state == TrialState.FAIL and trials["d"].system_attrs["fail_reason"] == ORPHAN_REASON
    assert trials["e"].state == TrialState.RUNNING
    assert not any(t.state == TrialState.WAITING for t in trials.values())


def test_an_in_memory_study_still_pickles_and_restores(tmp_path):
    searcher = make(None)
    searcher.suggest("a")
    run_trial(searcher, "a", [0.3])
    searcher.save(str(tmp_path / "s.pkl"))
    other = make(None)
    other.restore(str(tmp_path / "s.pkl"))
    assert [t.state for t in other.study.get_trials()] == [TrialState.PRUNED]


def test_a_new_search_refuses_an_existing_study_name(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    check_new_study(url, "alpha-test")
    assert not Path(tmp_path / "optuna.db").exists()  # the check creates nothing
    make(url).suggest("a")
    check_new_study(url, "other-name")
    with pytest.raises(SearchInputError, match="an Optuna study named 'alpha-test' already exists in sqlite:///"):
        check_new_study(url, "alpha-test")
    check_new_study(None, "alpha-test")


# --- a real Tune run: ASHA, an interruption (SIGINT) and Tuner.restore ---------------------------------
TUNE_SCRIPT = r'''
import os, signal, sys, tempfile, time
from pathlib import Path
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from search.study import StudySearch

EPOCHS = 4
root = Path(sys.argv[1])

def space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    return {}

def trainable(config):
    start = 0
    if tune.get_checkpoint():
        with tune.get_checkpoint().as_directory() as d:
            start = int(Path(d, "epoch").read_text())
    for epoch in range(start + 1, EPOCHS + 1):
        time.sleep(0.2)
        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch").write_text(str(epoch))
            tune.report({"val_pgd_acc": config["x"] * epoch / EPOCHS, "epoch": epoch,
                         "schedule_pct": 100.0 * epoch / EPOCHS}, checkpoint=tune.Checkpoint.from_directory(d))

class InterruptOnce(tune.Callback):
    """Ctrl-C after the second trial ends, in the first session only."""
    def on_trial_complete(self, iteration, trials, trial, **info):
        flag = root / "interrupted"
        if sum(t.status == "TERMINATED" for t in trials) >= 2 and not flag.exists():
            flag.write_text("1")
            os.kill(os.getpid(), signal.SIGINT)

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
searcher = StudySearch(space, "val_pgd_acc", "max", study_name="exp", storage_url=f"sqlite:///{root}/optuna.db",
                       seed=0, points_to_evaluate=[{"x": 0.5}])
asha = ASHAScheduler(time_attr="schedule_pct", metric="val_pgd_acc", mode="max", max_t=100, grace_period=25,
                     reduction_factor=2)
tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=6,
                                                  max_concurrent_trials=2),
           run_config=tune.RunConfig(name="exp", storage_path=str(root / "rr"), verbose=0,
                                     callbacks=[InterruptOnce()])).fit()
assert (root / "interrupted").exists()
grid = tune.Tuner.restore(str(root / "rr" / "exp"), trainable=trainable, resume_unfinished=True).fit()
with open(root / "ray.txt", "w") as f:
    for r in grid:
        f.write(f"{r.metrics['trial_id']} {r.metrics['epoch']}\n")
'''


@pytest.mark.slow
def test_a_real_tune_search_interrupted_and_restored_keeps_one_optuna_trial_per_ray_trial(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "tune_round_trip.py"
    script.write_text(TUNE_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "RAY_AIR_NEW_OUTPUT": "0"}
    env.pop("TUNE_DISABLE_SIGINT_HANDLER", None)  # the script relies on Tune's own Ctrl-C handling
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ray_trials = dict(line.split() for line in (tmp_path / "ray.txt").read_text().splitlines())
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = by_ray_id(study)
    assert len(ray_trials) == 6 and sorted(trials) == sorted(ray_trials)  # one Optuna trial per Ray trial
    assert trials[min(trials, key=lambda t: trials[t].number)].params == {"x": 0.5}  # warm start, used once
    for tid, epochs in ray_trials.items():
        t = trials[tid]
        assert t.state == (TrialState.COMPLETE if int(epochs) == EPOCHS else TrialState.PRUNED), tid
        assert sorted(t.intermediate_values) == list(range(1, int(epochs) + 1)), tid
        assert t.value == pytest.approx(t.params["x"] * int(epochs) / EPOCHS)
    assert {t.state for t in trials.values()} == {TrialState.COMPLETE, TrialState.PRUNED}  # ASHA stopped some
