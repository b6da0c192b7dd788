"""analysis.finalize as a person sees it: one evaluation for identical best/last files, progress lines, a table that
fits a terminal, and --help for the analysis commands from the table that validates their keys."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest

from analysis import finalize as fin
from analysis.options import KEYS, parse_args
from analysis.runs import load_runs, result_key
from trainables.schema import EVAL_COLUMNS
from test_analysis import train_tiny, trial_config

NAME = "ux-search"
AA_N = 16
# trial id -> val_pgd_acc per epoch; "same0001" peaks at its last epoch, so its best and last files are one model.
TRIALS = {"same0001": [0.30, 0.40, 0.50], "diff0002": [0.20, 0.45, 0.40]}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """A search's MLflow layout (parent + trial runs) with model files as the trainable writes them."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from trainables.checkpoints import BEST_MODEL_FILE, LAST_MODEL_FILE, model_file
    from trainables.files import atomic_save

    tmp_path = tmp_path_factory.mktemp("ux")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(NAME, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=NAME, tags={"rslad.role": "search", "rslad.search": NAME,
                                                         "rslad.metric": "val_pgd_acc", "rslad.mode": "max"})
    runs = {}
    arch = {"name": "cnn_small", "num_classes": 10, "in_channels": 1}
    for seed, (tid, pgd) in enumerate(TRIALS.items()):
        cfg = trial_config(tmp_path, 5 / 6, "nat-nat-nat", "digits_cnn_medium_trades")
        folder = tmp_path / "ray_results" / tid / "checkpoint_000002"
        best_epoch = pgd.index(max(pgd)) + 1
        last = train_tiny(seed, 30).state_dict()
        # Training keeps a copy of the weights at the best epoch: at the last epoch it equals the last model.
        best = last if best_epoch == len(pgd) else train_tiny(seed, 15).state_dict()
        atomic_save(model_file(best, cfg, arch, best_epoch, {}), folder / BEST_MODEL_FILE)
        atomic_save(model_file(last, cfg, arch, len(pgd), {}), folder / LAST_MODEL_FILE)
        run = client.create_run(exp, run_name=tid, tags={
            "mlflow.parentRunId": parent.info.run_id, "rslad.role": "trial", "rslad.search": NAME,
            "ray.trial_id": tid, "rslad.status": "finished", "rslad.checkpoint_dir": str(folder),
            "rslad.epochs_run": str(len(pgd))}).info.run_id
        client.log_batch(run, metrics=[Metric("best_val_pgd_acc", max(pgd[:e]), 0, e) for e in range(1, len(pgd) + 1)])
        runs[tid] = run
    return {"db": tmp_path / "mlruns.db", "runs": runs}


@pytest.fixture()
def store(pristine, tmp_path) -> dict:
    """Each test's own copy of the store (the model files are shared and only read)."""
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copy(pristine["db"], tmp_path / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return {"uri": uri, "client": MlflowClient(uri), "runs": pristine["runs"]}


@pytest.fixture()
def counted(monkeypatch) -> dict:
    """Count the evaluations finalize runs (the real functions still run), where finalize calls them."""
    calls: dict[str, int] = {}
    real_per_image, real_autoattack = fin.per_image_correct, fin.autoattack

    def per_image_correct(model, images, labels, attacks, **kwargs):
        calls[attacks[0]] = calls.get(attacks[0], 0) + 1
        return real_per_image(model, images, labels, attacks, **kwargs)

    def autoattack(*args, **kwargs):
        calls["autoattack"] = calls.get("autoattack", 0) + 1
        return real_autoattack(*args, **kwargs)

    monkeypatch.setattr(fin, "per_image_correct", per_image_correct)
    monkeypatch.setattr(fin, "autoattack", autoattack)
    return calls


COLUMNS = ("clean", "fgsm", "autoattack")


def test_identical_best_and_last_files_are_evaluated_once_and_logged_as_both(store, counted):
    result = fin.finalize(NAME, store["uri"], top_k=2, aa_n=AA_N, device="cpu", columns=COLUMNS)
    assert result.shared == ["same0001"]
    # One evaluation per column for same0001, two for diff0002 (its best and last files differ).
    assert counted == {"clean": 3, "fgsm": 3, "autoattack": 3}
    assert sorted(result.evaluated) == sorted((t, ck, c) for t in TRIALS for ck in ("best", "last") for c in COLUMNS)
    run = store["client"].get_run(store["runs"]["same0001"])
    for col in COLUMNS:
        assert run.data.metrics[result_key(col, "best")] == run.data.metrics[result_key(col, "last")]
        steps = {ck: [m.step for m in store["client"].get_metric_history(run.info.run_id, result_key(col, ck))]
                 for ck in ("best", "last")}
        assert steps == {"best": [3], "last": [3]}
    tags = run.data.tags
    assert tags["test.best.epoch"] == tags["test.last.epoch"] == "3"
    assert tags["test.best.autoattack"] == tags["test.last.autoattack"] == str(AA_N)
    other = store["client"].get_run(store["runs"]["diff0002"]).data.tags
    assert (other["test.best.epoch"], other["test.last.epoch"]) == ("2", "3")

    # Resumable: everything is current now, under both checkpoints.
    counted.clear()
    again = fin.finalize(NAME, store["uri"], top_k=2, aa_n=AA_N, device="cpu", columns=COLUMNS)
    assert again.evaluated == [] and again.copied == [] and counted == {}
    assert len(again.skipped) == 2 * 2 * len(COLUMNS)


def test_a_result_of_one_checkpoint_is_copied_to_the_identical_other_without_evaluating(store, counted):
    from mlflow.entities import Metric

    # As an earlier finalize (before best = last was recognised) would have left it: only best is logged.
    run_id = store["runs"]["same0001"]
    store["client"].log_batch(run_id, metrics=[Metric(result_key("clean", "best"), 0.777, 0, 3)])
    result = fin.finalize(NAME, store["uri"], top_k=1, device="cpu", columns=("clean",))
    assert counted == {} and result.evaluated == []
    assert result.copied == [("same0001", "last", "clean")] and result.skipped == [("same0001", "best", "clean")]
    run = store["client"].get_run(run_id)
    assert run.data.metrics[result_key("clean", "last")] == 0.777 and run.data.tags["test.last.epoch"] == "3"


def test_progress_names_each_evaluation_k_of_n_and_autoattack_sub_attacks(store, caplog):
    import trainables.attacks.autoattack as aa_module

    aa_logger = logging.getLogger(aa_module.PYAUTOATTACK_LOGGER)
    before = (aa_logger.level, aa_logger.propagate, list(aa_logger.handlers))
    caplog.set_level(logging.INFO, logger="analysis.finalize")
    fin.finalize(NAME, store["uri"], top_k=2, aa_n=AA_N, device="cpu", columns=COLUMNS)
    lines = [r.getMessage() for r in caplog.records if r.name == "analysis.finalize"]
    done = [ln for ln in lines if re.match(r"\[\d+/\d+\] .* = [\d.]+% \(", ln)]
    # 3 model files (same0001 once, diff0002 best and last) x 3 columns, numbered in order.
    assert [ln.split()[0] for ln in done] == [f"[{k}/9]" for k in range(1, 10)]
    assert "trial same0001 (rank 1) best+last (epoch 3): Clean" in done[0]
    assert all("elapsed, ETA" in ln for ln in done)
    assert done[0].endswith("ETA ?)") and "ETA ~" in done[-2] and done[-1].endswith("ETA 0:00)")
    aa_lines = [ln for ln in lines if "AutoAttack" in ln and ln.startswith("[7/9]")]
    assert any("AutoAttack apgd-ce ..." in ln for ln in aa_lines)
    assert any(re.search(r"AutoAttack apgd-ce batch 1/1: \d+ of \d+ broken", ln) for ln in aa_lines)
    assert any(re.search(r"AutoAttack after APGD-CE: robust accuracy [\d.]+%", ln) for ln in aa_lines)
    assert (aa_logger.level, aa_logger.propagate, list(aa_logger.handlers)) == before


def test_the_printed_table_fits_100_columns_with_every_column(store, capsys):
    fin.main({"name": NAME, "tracking.uri": store["uri"], "top_k": 2, "aa.n": AA_N, "select": "best_val_pgd_acc",
              "device": "cpu"})
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    header = out.splitlines()[1].split()
    assert header == ["rank", "trial", "ckpt", "epoch", "select", "Clean", "FGSM", "PGD_SAT", "PGD_TRADES", "CW_inf",
                      "AA"]
    assert "best = last (one model file, evaluated once) for: same0001" in out
    runs = load_runs(NAME, store["uri"]).set_index("trial_id")
    row = next(ln.split() for ln in out.splitlines() if ln.split()[1:3] == ["diff0002", "last"])
    assert row[3] == "3" and row[5] == f"{100 * runs.loc['diff0002', result_key('clean', 'last')]:.2f}"


def test_the_table_of_three_trials_with_an_autoattack_subset_too_stays_within_100_columns():
    runs = pd.DataFrame([{"trial_id": f"{i:08x}", "best_val_pgd_acc": 0.5,
                          **{result_key(c, ck): 0.123 for c in (*EVAL_COLUMNS, "aa_custom") for ck in ("best", "last")},
                          "test.best.epoch": "215", "test.last.epoch": "300"} for i in range(3)])
    text = fin.format_table(fin.final_table(runs, list(runs["trial_id"]), "best_val_pgd_acc"))
    assert max(len(line) for line in text.splitlines()) <= 100 and "AA_subset" in text and "12.30" in text


@pytest.mark.parametrize("module, flag", [("analysis.finalize", "--help"), ("analysis.report", "-h")])
def test_help_lists_each_key_with_its_default_and_meaning_and_exits_0(module, flag, capsys):
    import importlib

    mod = importlib.import_module(module)
    assert mod.cli([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module} key=value")
    assert max(len(line) for line in out.splitlines()) <= 100
    flat = " ".join(out.split())
    for key in mod.ALLOWED_KEYS:
        option = KEYS[key]
        assert f" {key} {option.shown or option.default} {' '.join(option.meaning.split()[:3])}" in flat, key
    # The same table validates: the defaults help shows are the ones a run gets.
    defaults = parse_args(["name=x"], mod.ALLOWED_KEYS)
    assert all(defaults[k] == KEYS[k].default for k in mod.ALLOWED_KEYS if k not in ("name", "tracking.uri"))
