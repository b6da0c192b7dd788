"""search/cli.py and search/config.py: --help from the schema that validates, --cfg job, refusals of Hydra forms."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.cli import read_command_line, render_cfg_job, render_help
from search.config import SearchConfig, SearchInputError, compose_config, field_docs, search_key_docs, search_keys
from trainables.config import TrainConfig


@pytest.fixture(scope="module")
def paper() -> dict:
    return compose_config(["space=joint"])


@pytest.fixture(scope="module")
def smoke() -> dict:
    return compose_config(["space=joint", "profile=smoke"])


def validate(composed: dict) -> None:
    SearchConfig.from_dict(composed)


def test_every_search_key_and_trainconfig_field_has_a_docstring():
    assert sorted(search_key_docs()) == sorted(key for key, _ in search_keys())
    assert all(search_key_docs().values())
    assert sorted(field_docs(TrainConfig)) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert field_docs(TrainConfig)["alpha"].startswith("RSLAD weight of the adversarial term")


def help_rows(text: str) -> dict[str, str]:
    """key -> the default printed beside it (the first two words of each key line)."""
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("  ") and not line.startswith("    ") and len(words) >= 2:
            rows[words[0]] = words[1]
    return rows


def test_help_lists_every_key_with_the_composed_default_and_fits_100_columns(paper, smoke):
    text = render_help(paper)
    assert text.startswith("usage: python -m search.run") and "--cfg job" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = help_rows(text)
    for key, _ in search_keys():
        assert key in rows, key
    for f in dataclasses.fields(TrainConfig):
        assert f"train.{f.name}" in rows, f.name
    assert rows["space"] == "joint" and rows["profile"] == "paper" and rows["num_samples"] == "null"
    assert rows["train.epochs"] == "300" and rows["train.lr_milestones"] == "[215,260,285]"
    flat = " ".join(text.split())
    assert "every trainable teacher of train.dataset" in flat  # a meaning from the table
    assert "Allowed: nat-nat-nat, nat-adv-nat, nat-adv-adv, adv-adv-adv." in flat  # a field's choices
    small = help_rows(render_help(smoke))
    assert small["profile"] == "smoke" and small["train.epochs"] == "8" and small["teachers.auto_train"] == "true"


def test_validate_accepts_the_defaults_and_refuses_bad_values_in_one_line(paper):
    validate(paper)
    validate({**paper, "num_samples": 4, "trial": {**paper["trial"], "gpus": 0.25}})
    cases = {
        ("num_samples", 0): "num_samples=0 must be an integer >= 1",
        ("num_samples", "abc"): "num_samples='abc' must be an integer",
        ("num_samples", True): "num_samples=True must be an integer",
        ("scheduler", "hyperband"): "scheduler='hyperband' is not allowed; allowed: asha, none",
        ("resume", "yes"): "resume='yes' must be true or false",
        ("seed", None): "seed=null is not allowed; seed must be an integer",
    }
    for (key, value), message in cases.items():
        with pytest.raises(SearchInputError) as err:
            validate({**paper, key: value})
        assert str(err.value) == message and "\n" not in str(err.value)
    with pytest.raises(SearchInputError, match=r"trial.gpus=-1 must be a number >= 0"):
        validate({**paper, "trial": {**paper["trial"], "gpus": -1}})
    with pytest.raises(SearchInputError, match=r"teachers.names=\['a', 1\] must be a list of names"):
        validate({**paper, "teachers": {**paper["teachers"], "names": ["a", 1]}})


def test_cfg_job_is_the_resolved_config_as_yaml(tmp_path):
    cfg = SearchConfig.from_dict(compose_config(["space=alpha", "profile=smoke", "storage=rr"])).resolved(tmp_path)
    text = render_cfg_job(cfg)
    assert yaml.safe_load(text) == cfg.to_dict()
    assert f"storage: {tmp_path}/rr" in text


@pytest.mark.parametrize("argv, mode, overrides", [
    (["--help"], "help", []),
    (["profile=smoke", "-h"], "help", ["profile=smoke"]),
    (["--cfg", "job", "space=alpha"], "cfg", ["space=alpha"]),
    (["--cfg=job"], "cfg", []),
    (["space=alpha", "train.lr_milestones=[6,7]", "teachers.names=[a,b]", "name='x,y'"], "run",
     ["space=alpha", "train.lr_milestones=[6,7]", "teachers.names=[a,b]", "name='x,y'"]),
])
def test_read_command_line(argv, mode, overrides):
    assert read_command_line(argv) == type(read_command_line([]))(mode, overrides)


@pytest.mark.parametrize("argv, message", [
    (["-m", "space=alpha"], "-m: a search runs its trials on Ray Tune from one space file"),
    (["--multirun"], "--multirun: a search runs its trials on Ray Tune"),
    (["space=alpha,epochs"], "'space=alpha,epochs' gives several values; one search takes one value per key"),
    (["train.alpha=range(0,1)"], "gives several values"),
    (["+foo=1"], "'+foo=1' adds or removes a key, which the search would ignore"),
    (["++train.lr=1"], "adds or removes a key"),
    (["~seed"], "adds or removes a key"),
    (["hydra.run.dir=/tmp/x"], "hydra.run.dir: Hydra's own settings have no effect on a search"),
    (["--cfg", "hydra"], "--cfg hydra: only --cfg job"),
    (["--cfg"], "--cfg (nothing): only --cfg job"),
    (["--info"], "Hydra's option '--info' is not used by the search"),
    (["--verbose"], "option '--verbose' is not used by the search; allowed: --help, -h, --cfg job, key=value"),
    (["alpha"], "argument 'alpha' is not key=value"),
])
def test_forms_without_effect_are_refused_in_one_line_that_recommends_nothing_refused(argv, message):
    with pytest.raises(SearchInputError) as err:
        read_command_line(argv)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert "add --multirun" not in text and "use +" not in text
    assert "hydra." not in text.replace(argv[0].split("=")[0], "")


# --- the real commands: --help, --cfg job, dry_run=true and a refusal, none of which starts Ray or writes -----
REPO = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """An empty working folder, HOME and Ray temp folder of a command (Ray would create its session folder there)."""
    out = {k: tmp_path / k for k in ("work", "home", "raytmp")}
    for folder in out.values():
        folder.mkdir()
    return out


def cli(places: dict[str, Path], *args: str, module: str = "search.run") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(places["home"]), "RAY_TMPDIR": str(places["raytmp"])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=places["work"], env=env, capture_output=True,
                          text=True, timeout=180)


def assert_nothing_started_or_written(places: dict[str, Path]) -> None:
    assert {k: tree(v) for k, v in places.items()} == {"work": [], "home": [], "raytmp": []}


def test_help_of_the_real_commands_lists_every_key(places):
    for module, flag in (("search.run", "--help"), ("search.teachers", "-h")):
        proc = cli(places, "profile=smoke", flag, module=module)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.startswith(f"usage: python -m {module} [key=value ...]")
        rows = help_rows(proc.stdout)
        assert all(key in rows for key, _ in search_keys())
        assert rows["dry_run"] == "false" and rows["verbose"] == "false" and rows["optuna.storage"] == "''"
        assert rows["train.epochs"] == "8"  # the smoke profile's
    assert_nothing_started_or_written(places)


def test_a_dry_run_prints_the_plan_without_starting_ray_or_writing(places):
    proc = cli(places, "space=alpha", "profile=smoke", "name=d1", "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    work = places["work"]
    assert out.startswith("search d1: the plan (dry run: nothing was started or written)\n")
    assert out.endswith("\nstart it: python -m search.run space=alpha profile=smoke name=d1\n")
    # 100 columns, unless a path alone is longer (paths are not broken, so they can be copied)
    assert all(len(line) <= 100 or len(max(line.split(), key=len)) > 60 for line in out.splitlines()[:-1])
    flat = " ".join(out.split())  # long entries wrap at 100 columns
    for text in ("searched alpha_ratio: loguniform 0.1 <= value <= 10.0 -> train.alpha (ratio_to_fraction)",
                 "trials 8, 2 at once; scheduler asha; Optuna TPE seed 0",
                 "trial-epochs ~32 expected with ASHA on schedule_pct",  # 8 trials x 8 epochs x 50 %
                 "64 if every trial ran its schedule (8 x 8 epochs per trial)",
                 f"teachers digits_cnn_medium_trades: missing, trained before the search (8 epochs, "
                 f"teachers.auto_train=true) -> {work}/teachers/digits_cnn_medium_trades.pt",
                 f"storage {work}/ray_results/d1 (Ray state, trial checkpoints)",
                 f"tracking sqlite:///{work}/mlruns.db (MLflow experiment 'd1')",
                 f"study sqlite:///{work}/optuna.db (Optuna study 'd1')"):
        assert text in flat, text
    assert_nothing_started_or_written(places)


def test_a_key_without_effect_is_refused_by_the_real_command_in_one_line(places):
    proc = cli(places, "space=alpha", "profile=smoke", "+foo=1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: '+foo=1' adds or removes a key, which the search would ignore; "
                                        "set existing keys with key=value (see --help)"]
    assert_nothing_started_or_written(places)


def test_cfg_job_and_dry_runs_in_process_leave_ray_unstarted(tmp_path, monkeypatch, capsys):
    import ray

    from search.cli import run_cli
    from search.run import main
    from search.teachers import main as teachers_main

    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--cfg", "job", "profile=smoke", "dry_run=true"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["dry_run"] is True and cfg["optuna"] == {"storage": ""} and cfg["storage"] == f"{tmp_path}/ray_results"
    assert run_cli(main, ["space=method", "profile=smoke", "dry_run=true"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    # the recipes run 3, 5 or 8 epochs (SAT's, ARD's and RSLAD's schedules scaled to the smoke profile)
    assert "trial-epochs 59 (10 trials x 5.9 epochs per trial on average; scheduler none: every trial runs to its " \
           "end)" in flat
    assert run_cli(teachers_main, ["profile=smoke", "teachers.names=[digits_cnn_small_trades]", "dry_run=true"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "teachers of digits (dry run: nothing was started or written)",
        f"  digits_cnn_small_trades: trained: cnn_small, trades, eps 0.1, 8 epochs -> "
        f"{tmp_path}/teachers/digits_cnn_small_trades.pt"]
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []
