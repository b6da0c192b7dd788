"""The search command before Ray starts: composition, key checks, path resolution, teachers, CLI errors."""

from pathlib import Path

import pytest
from commands import run_search

from search.config import SearchConfigError, compose_config
from trainables.paths import absolute_tracking_uri
from search.config import SearchInputError
from search.plan import plan_search
from spaces import SpaceError, list_spaces

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("space", list_spaces())
@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_every_space_composes_with_every_profile(space, profile, tmp_path):
    plan = plan_search([f"space={space}", f"profile={profile}"], cwd=tmp_path)
    assert plan.space.name == space and plan.profile == profile
    assert plan.num_samples >= 1 and plan.max_concurrent >= 1
    assert plan.base_train["dataset"] == ("digits" if profile == "smoke" else "cifar10")
    assert all(name.startswith("digits_") for name in plan.teachers) == (profile == "smoke")


def test_profiles_and_overrides_land_in_the_train_config(tmp_path):
    plan = plan_search(["space=alpha", "profile=smoke", "train.epochs=3", "num_samples=2", "seed=7"], cwd=tmp_path)
    assert plan.base_train["epochs"] == 3 and plan.base_train["eps"] == 0.1
    assert plan.num_samples == 2 and plan.cfg.seed == 7
    assert plan.cfg.teachers.auto_train is True
    paper = plan_search(["space=alpha"], cwd=tmp_path)
    assert paper.cfg.teachers.auto_train is False and paper.base_train["epochs"] == 300


def test_every_relative_path_is_made_absolute_in_the_driver(tmp_path):
    plan = plan_search(["space=alpha", "storage=runs", "tracking.uri=sqlite:///db/m.db",
                        "train.data_dir=d", "train.teachers_dir=t"], cwd=tmp_path)
    assert plan.cfg.storage == str(tmp_path / "runs")
    assert plan.cfg.tracking.uri == f"sqlite:///{tmp_path}/db/m.db"
    assert plan.base_train["data_dir"] == str(tmp_path / "d")
    assert plan.base_train["teachers_dir"] == str(tmp_path / "t")
    assert plan_search(["space=alpha", "storage=s3://bucket/runs"], cwd=tmp_path).cfg.storage == "s3://bucket/runs"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_teachers_in_play_follow_the_space():
    assert plan_search(["space=teacher", "profile=smoke"]).teachers == [
        "digits_cnn_large_trades", "digits_cnn_medium_sat", "digits_cnn_medium_sat_awp", "digits_cnn_medium_trades",
        "digits_cnn_medium_trades_awp", "digits_cnn_small_trades"]
    assert plan_search(["space=alpha"]).teachers == ["wrn34_10_trades"]
    assert plan_search(["space=alpha", "profile=smoke", "train.teacher=digits_cnn_small_trades"]
                       ).teachers == ["digits_cnn_small_trades"]


@pytest.mark.parametrize("overrides, error, message", [
    (["train.alpah=1"], SearchConfigError, "unknown key 'train.alpah'; allowed train keys: dataset"),
    (["spcae=alpha"], SearchConfigError, "unknown key 'spcae'; allowed keys: space, name"),
    (["profile=tiny"], SearchConfigError, "profile='tiny' not found; allowed: paper, smoke"),
    (["space=alpah"], SpaceError, "space='alpah' not found; available: alpha"),
    (["train.epochs=abc"], Exception, "epochs='abc' must be an integer"),
    (["train.teacher=wrn99"], Exception, "teacher='wrn99' is not registered"),
    (["scheduler=hyperband"], SearchInputError, "scheduler='hyperband' is not allowed; allowed: asha, none"),
    (["resume=true"], SearchInputError, "resume=true needs name="),
    (["num_samples=0"], SearchInputError, "num_samples=0 must be an integer >= 1"),
])
def test_bad_input_is_one_line_naming_the_key(overrides, error, message):
    with pytest.raises(error) as err:
        plan_search(["space=alpha", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_typo_exits_2_with_one_line(tmp_path):
    proc = run_search(tmp_path, "space=alpha", "train.alpah=0.5")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown key 'train.alpah'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ray_results").exists()


def test_paper_profile_missing_teacher_fails_before_any_trial(tmp_path):
    # train.download=true: the data check passes (its folder can be created), so the teacher is what fails
    proc = run_search(tmp_path, "space=alpha", "tracking.enabled=false", "train.download=true")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "teacher 'wrn34_10_trades' has no weights at" in line and "Zhang2019Theoretically" in line
    assert not (tmp_path / "ray_results").exists()


def test_compose_returns_plain_containers():
    cfg = compose_config(["profile=smoke"])
    assert type(cfg) is dict and type(cfg["train"]) is dict and type(cfg["train"]["lr_milestones"]) is list


def test_finite_spaces_run_each_configuration_once():
    from search.plan import choice_overrides

    plan = plan_search(["space=teacher", "profile=smoke", "num_samples=10"])
    assert len(choice_overrides(plan.space)) == 6 and plan.num_samples == 6
    assert plan_search(["space=rsl_source", "num_samples=2"]).num_samples == 2
    assert plan_search(["space=alpha", "num_samples=20"]).num_samples == 20  # a range param: no such cap
