"""search/help.py and search/keys.py: --help from the table that validates, --cfg job, refusals of Hydra forms."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from search.config import compose_config, resolve_paths
from search.errors import SearchInputError
from search.help import read_command_line, render_cfg_job, render_help, train_field_docs
from search.keys import KEYS, flat_keys, validate
from trainables.config import TrainConfig


@pytest.fixture(scope="module")
def paper() -> dict:
    return compose_config(["space=joint"])


@pytest.fixture(scope="module")
def smoke() -> dict:
    return compose_config(["space=joint", "profile=smoke"])


def test_the_key_table_and_config_yaml_name_the_same_keys(paper):
    assert sorted(flat_keys(paper)) == sorted(k.name for k in KEYS if k.name != "profile")


def test_every_trainconfig_field_has_a_docstring():
    assert sorted(train_field_docs()) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert train_field_docs()["alpha"].startswith("RSLAD weight of the adversarial term")


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
    for key in KEYS:
        assert key.name in rows, key.name
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
        ("num_samples", 0): "num_samples=0 out of range; allowed: >= 1",
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
    with pytest.raises(SearchInputError, match=r"trial.gpus=-1 out of range; allowed: >= 0"):
        validate({**paper, "trial": {**paper["trial"], "gpus": -1}})
    with pytest.raises(SearchInputError, match=r"teachers.names=\['a', 1\] must be a list of names"):
        validate({**paper, "teachers": {**paper["teachers"], "names": ["a", 1]}})


def test_cfg_job_is_the_resolved_config_as_yaml(tmp_path):
    cfg = resolve_paths(compose_config(["space=alpha", "profile=smoke", "storage=rr"]), tmp_path)
    text = render_cfg_job(cfg)
    assert yaml.safe_load(text) == cfg
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
