"""The search-time split: read from Tune's result files and the driver's timers (synthetic here; a tiny real run is slow)."""

import json

import pytest

from benchmarks.search_time import Timers, main, read_results, split


def write_trial(folder, trial_id, rows):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("".join(json.dumps({"trial_id": trial_id, **r}) + "\n" for r in rows))


def test_split_separates_epochs_fixed_cost_and_checkpoints(tmp_path):
    experiment = tmp_path / "exp"
    # Two trials: 1 s epochs, 0.2 s of checkpoint + report after each; the first result also carries set-up.
    write_trial(experiment / "t1", "a", [{"epoch_time_s": 1.0, "time_this_iter_s": 4.2, "pid": 7},
                                         {"epoch_time_s": 1.0, "time_this_iter_s": 1.2},
                                         {"epoch_time_s": 1.0, "time_this_iter_s": 1.2}])
    write_trial(experiment / "t2", "b", [{"epoch_time_s": 1.0, "time_this_iter_s": 2.2, "pid": 7}])  # a reused worker
    timers = {"start": 100.0, "installed": 102.0, "parent_start": 99.0, "main_end": 150.0, "exit": 155.0,
              "seconds": {"ray_init": 5.0, "teachers": 12.0, "ray_init_in_teachers": 5.0, "tuner_fit": 30.0,
                          "mlflow": 3.0},
              "trials": {"a": {"starts": [110.0], "results": [116.2, 117.4, 118.6]},  # 6.2 s to the first result
                         "b": {"starts": [111.0], "results": [115.2]},
                         "teacher-trial": {"starts": [101.0], "results": [105.0]}}}  # not the search's
    out = split(timers, read_results(experiment), wall=60.0)
    assert out["trials"] == 2 and out["trial_epochs"] == 4 and out["workers"] == 1
    assert out["epochs_trial_s"] == pytest.approx(4.0)
    assert out["per_report_s"] == pytest.approx(0.2)
    assert out["checkpoint_report_trial_s"] == pytest.approx(0.4)
    assert out["fixed_trial_s"] == pytest.approx((6.2 - 1.2) + (4.2 - 1.2))
    assert out["fixed_per_trial_s"] == pytest.approx(4.0)
    assert out["trial_seconds"] == pytest.approx(8.6 + 4.2)
    assert (out["ray_init_s"], out["teachers_s"], out["mlflow_driver_s"], out["exit_s"]) == (5.0, 7.0, 3.0, 5.0)
    assert out["child_start_s"] == 3.0
    assert out["trial_epochs_per_hour"] == pytest.approx(4 / 60 * 3600)


def test_timers_exclude_nested_calls_and_dump_json(tmp_path):
    class Owner:
        @staticmethod
        def outer(inner):
            return inner()

        @staticmethod
        def inner():
            return 1

    timers = Timers(str(tmp_path / "t.json"))
    timers.wrap(Owner, "inner", "inner", exclusive_of=("outer",))
    timers.wrap(Owner, "outer", "outer")
    assert Owner.outer(Owner.inner) == 1 and Owner.inner() == 1
    assert timers.calls == {"inner": 1, "outer": 1}  # the call made inside `outer` is outer's time
    timers.wrap(Owner, "inner", "counted")  # not exclusive: timed, and also noted as part of `outer`
    Owner.outer(Owner.inner)
    assert timers.calls["counted"] == 1 and "counted_in_outer" in timers.seconds
    timers.dump()
    assert set(json.loads((tmp_path / "t.json").read_text())) >= {"seconds", "calls", "trials", "main_end"}


@pytest.mark.slow
def test_search_time_on_a_tiny_real_search(tmp_path, capsys, monkeypatch):
    """About 1-2 minutes on 2 cores: one trial of 2 epochs, teachers trained for 1 epoch."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the command's Ray writes no ~/.ray of the person running tests
    main(["--num-samples", "1", "--workdir", str(tmp_path), "--json", str(tmp_path / "split.json"), "--",
          "space=alpha", "profile=smoke", "train.epochs=2", "train.train_subset=256", "teachers.epochs=1",
          "max_concurrent=1"])
    (run,) = json.loads((tmp_path / "split.json").read_text())
    assert run["trials"] == 1 and run["trial_epochs"] == 2
    assert run["teachers_s"] > 0 and run["ray_init_s"] > 0 and run["tuner_fit_s"] > run["epochs_trial_s"] > 0
    assert run["fixed_per_trial_s"] > 0 and run["mlflow_driver_s"] > 0
    assert "trial-epochs per hour" in capsys.readouterr().out
