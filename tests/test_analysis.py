"""analysis/: reading a search back from MLflow, the final evaluation (resumable, AA labelling), the report and its CLI.

A tiny fake search is written into a temporary SQLite MLflow store with the layout of
search/tracking.py (one parent run, one child run per trial, per-epoch metric histories) and
real model files (a small CNN trained for a few plain steps on digits, so attacks have
informative gradients). Every test works on its own copy of the store.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import paper, plots
from analysis.options import parse_args, tracking_uri
from analysis.runs import ExperimentNotFoundError
from search.config import SearchConfigError
from analysis.finalize import AA, AA_CUSTOM, aa_column, finalize
from analysis.report import build_report
from analysis.runs import load_history, load_runs, result_key
from trainables.schema import EVAL_COLUMNS

REPO = Path(__file__).resolve().parents[1]
NAME = "fake-search"
# At eps 0.2 APGD-CE already breaks all 16 digits, so standard AutoAttack stops after its first attack
# (about 0.3 s instead of about 15 s per model file on one core); the full sequence is the adapter's own test.
EPS = 0.2
EPOCHS = 4
AA_N = 16
TOP_K = 2
# trial id, alpha, rsl_source, teacher, status, val_pgd_acc per epoch run
TRIALS = [
    ("t0001", 5 / 6, "nat-nat-nat", "digits_cnn_medium_trades", "finished", [0.30, 0.45, 0.52, 0.50]),
    ("t0002", 0.5, "nat-adv-nat", "digits_cnn_small_trades", "finished", [0.25, 0.40, 0.47, 0.49]),
    ("t0003", 0.2, "adv-adv-adv", "digits_cnn_large_trades", "stopped_early", [0.10]),
    ("t0004", 0.9, "nat-nat-nat", "digits_cnn_medium_trades", "stopped_early", [0.20, 0.35]),
    # Failed with the highest metric of all: must never be ranked.
    ("t0005", 0.7, "nat-adv-adv", "digits_cnn_small_trades", "failed", [0.60]),
]
TEACHER_PGD = {"digits_cnn_small_trades": 0.41, "digits_cnn_medium_trades": 0.55, "digits_cnn_large_trades": 0.62}
SPACE_YAML = """\
description: test space
metric: val_pgd_acc
mode: max
params:
  alpha_ratio: {type: loguniform, low: 0.1, high: 10.0, target: alpha, transform: ratio_to_fraction}
  rsl_source: {type: choice, values: [nat-nat-nat, nat-adv-nat, nat-adv-adv, adv-adv-adv]}
  teacher: {type: choice, values: [wrn34_10_trades, resnet18_trades]}
fixed: {method: rslad}
profiles:
  smoke:
    params:
      teacher: {values: [digits_cnn_small_trades, digits_cnn_medium_trades, digits_cnn_large_trades]}
"""


def val_clean(pgd: float) -> float:
    """A made-up validation clean accuracy for a PGD accuracy (distinct per epoch)."""
    return round(0.4 + pgd, 4)


def trial_config(tmp: Path, alpha: float, rsl_source: str, teacher: str):
    from trainables.config import TrainConfig

    return TrainConfig(dataset="digits", student="cnn_small", method="rslad", teacher=teacher, alpha=alpha,
                       rsl_source=rsl_source, eps=EPS, attack_step_size=0.025, device="cpu", val_size=300,
                       epochs=EPOCHS, lr_milestones=(3,), lr_milestones_ref=EPOCHS, teachers_dir=str(tmp / "teachers"))


def train_tiny(seed: int, steps: int) -> torch.nn.Module:
    """cnn_small after a few plain CE steps on digits: accurate enough that attacks have something to break."""
    from conftest import train_digits_net

    from trainables.data import load_digits_tensors, to_float
    from trainables.models import build_model

    x, y, _, _ = load_digits_tensors()
    return train_digits_net(to_float(x), y, steps, seed, model=lambda: build_model("cnn_small", 10, 1))


def write_fake_search(tmp: Path) -> dict:
    """The exact MLflow layout of a search (parent + child runs) with model files; returns what was logged."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from trainables.checkpoints import BEST_MODEL_FILE, LAST_MODEL_FILE, model_file
    from trainables.files import atomic_save
    from trainables.models import build_model
    from trainables.teachers import get_teacher, save_teacher_checkpoint

    for name, pgd in TEACHER_PGD.items():
        save_teacher_checkpoint(build_model(get_teacher(name).arch, 10, 1), tmp / "teachers" / f"{name}.pt", name,
                                {"val_pgd_acc": pgd, "val_clean_acc": 0.9})
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(NAME, artifact_location=(tmp / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name=NAME, tags={
        "rslad.role": "search", "rslad.search": NAME, "rslad.space": "joint", "rslad.profile": "smoke",
        "rslad.metric": "val_pgd_acc", "rslad.mode": "max", "rslad.storage": str(tmp / "ray_results" / NAME),
        "git.revision": "0" * 40, "git.dirty": "False"}).info.run_id
    client.log_batch(parent, params=[Param("space", "joint"), Param("profile", "smoke"),
                                     Param("num_samples", str(len(TRIALS))), Param("seed", "0")])
    (tmp / "config").mkdir()
    (tmp / "config" / "space.yaml").write_text(SPACE_YAML)
    (tmp / "config" / "search.yaml").write_text("space: joint\nprofile: smoke\n")
    client.log_artifacts(parent, str(tmp / "config"), "config")

    logged = {}
    for seed, (tid, alpha, rsl, teacher, status, pgd) in enumerate(TRIALS):
        cfg = trial_config(tmp, alpha, rsl, teacher)
        folder = tmp / "ray_results" / NAME / f"trial_{tid}" / "checkpoint_000003"
        best_epoch = max(range(len(pgd)), key=lambda i: pgd[i]) + 1
        arch = {"name": "cnn_small", "num_classes": 10, "in_channels": 1}
        last = train_tiny(seed, 40)
        best = train_tiny(seed, 25)
        atomic_save(model_file(best.state_dict(), cfg, arch, best_epoch, {"val_pgd_acc": max(pgd)}),
                    folder / BEST_MODEL_FILE)
        atomic_save(model_file(last.state_dict(), cfg, arch, len(pgd), {"val_pgd_acc": pgd[-1]}),
                    folder / LAST_MODEL_FILE)
        tags = {"mlflow.parentRunId": parent, "rslad.role": "trial", "rslad.search": NAME, "ray.trial_id": tid,
                "rslad.status": status, "rslad.checkpoint_dir": str(folder), "rslad.epochs_run": str(len(pgd))}
        if status == "failed":
            tags["rslad.error"] = "FloatingPointError: non-finite training loss at epoch 2: nan"
        run = client.create_run(exp_id, run_name=f"train_trial_{tid}", tags=tags).info.run_id
        params = {k: str(v) for k, v in cfg.to_dict().items()}
        params.update({"search.alpha_ratio": str(alpha / (1 - alpha)), "search.rsl_source": rsl,
                       "search.teacher": teacher})
        metrics = []
        for epoch, value in enumerate(pgd, 1):
            best_so_far = max(pgd[:epoch])
            row = {"train_loss": 2.0 / epoch, "lr": 0.05, "val_clean_acc": val_clean(value), "val_pgd_acc": value,
                   "best_val_pgd_acc": best_so_far, "best_epoch": pgd.index(best_so_far) + 1,
                   "schedule_pct": 100.0 * epoch / EPOCHS, "epoch_time_s": 0.5, "images_per_s": 1000.0}
            metrics += [Metric(k, float(v), 1_700_000_000_000 + epoch, epoch) for k, v in row.items()]
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run, "FAILED" if status == "failed" else "FINISHED")
        logged[tid] = {"run_id": run, "params": params, "pgd": pgd, "best_epoch": best_epoch, "folder": folder}
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "parent": parent, "trials": logged}


def copy_store(src: dict, dst: Path) -> dict:
    """The same store in another SQLite file (model files and artifacts stay shared, read-only here)."""
    shutil.copy(src["db"], dst / "mlruns.db")
    return {**src, "uri": f"sqlite:///{dst / 'mlruns.db'}"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two torch threads on two shared cores made AutoAttack 20x slower here (spinning OpenMP workers).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("search")
    info = write_fake_search(tmp)
    return {**info, "db": tmp / "mlruns.db", "tmp": tmp}


@pytest.fixture()
def store(pristine, tmp_path) -> dict:
    return copy_store(pristine, tmp_path)


@pytest.fixture(scope="module")
def finalized(pristine, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("finalized")
    info = copy_store(pristine, folder)
    result = finalize(NAME, info["uri"], top_k=TOP_K, aa_n=AA_N, device="cpu")
    return {**info, "db": folder / "mlruns.db", "result": result}


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


# --- load_runs / load_history ---------------------------------------------------------------------
def test_load_runs_returns_typed_logged_values(store):
    runs = load_runs(NAME, store["uri"]).set_index("trial_id")
    assert sorted(runs.index) == [t[0] for t in TRIALS]
    for tid, alpha, rsl, teacher, status, pgd in TRIALS:
        row = runs.loc[tid]
        assert row["run_id"] == store["trials"][tid]["run_id"]
        assert row["status"] == status and row["epochs_run"] == len(pgd)
        assert row["checkpoint_dir"] == str(store["trials"][tid]["folder"])
        assert row["alpha"] == pytest.approx(alpha) and isinstance(row["alpha"], float)
        assert row["k"] == pytest.approx(alpha / (1 - alpha))
        assert row["rsl_source"] == rsl and row["teacher"] == teacher
        assert row["epochs"] == EPOCHS and row["val_size"] == 300 and row["lr_milestones"] == (3,)
        assert row["augment"] is True or row["augment"] == True  # noqa: E712 (numpy bool)
        assert row["search.alpha_ratio"] == pytest.approx(alpha / (1 - alpha))
        assert row["search.teacher"] == teacher
        assert row["best_val_pgd_acc"] == pytest.approx(max(pgd))
        assert row["val_pgd_acc"] == pytest.approx(pgd[-1])
        assert row["best_epoch"] == store["trials"][tid]["best_epoch"]
        assert row["lr"] == 0.1 and row["metric.lr"] == 0.05  # the param keeps the name, the metric moves
    assert runs.loc["t0005", "error"].startswith("FloatingPointError")
    assert pd.api.types.is_float_dtype(runs["alpha"]) and pd.api.types.is_integer_dtype(runs["epochs"])


def test_load_history_gives_every_epoch(store):
    hist = load_history(NAME, store["uri"], run_ids=[store["trials"]["t0001"]["run_id"]])
    assert set(hist["trial_id"]) == {"t0001"}
    pgd = hist[hist["metric"] == "val_pgd_acc"].sort_values("step")
    assert pgd["step"].tolist() == [1, 2, 3, 4]
    assert pgd["value"].tolist() == pytest.approx(TRIALS[0][5])


def test_unknown_experiment_lists_existing_ones(store):
    with pytest.raises(ExperimentNotFoundError, match=f"existing experiments: {NAME}"):
        load_runs("no-such-search", store["uri"])


# --- finalize -------------------------------------------------------------------------------------
def test_finalize_evaluates_exactly_the_top_k(finalized):
    result = finalized["result"]
    assert result.select == "best_val_pgd_acc" and result.mode == "max"
    assert result.top == ["t0001", "t0002"]  # t0005 scores higher but failed
    runs = load_runs(NAME, finalized["uri"]).set_index("trial_id")
    keys = [result_key(c, ck) for c in EVAL_COLUMNS for ck in ("best", "last")]
    assert sorted(result.evaluated) == sorted((t, ck, c) for t in result.top for ck in ("best", "last")
                                              for c in EVAL_COLUMNS)
    for tid in runs.index:
        present = [k for k in keys if k in runs.columns and pd.notna(runs.loc[tid, k])]
        assert present == (keys if tid in result.top else []), tid
    for tid in result.top:
        row = runs.loc[tid]
        assert row["test.aa_n"] == str(AA_N) and row["test.aa_version"] == "standard"
        assert row["test.aa_attacks"] == "apgd-ce,apgd-t,fab-t,square"
        assert row["test.n"] == "359"
        for ck in ("best", "last"):
            clean = row[result_key("clean", ck)]
            assert 0.3 < clean <= 1.0
            for col in EVAL_COLUMNS[1:]:
                assert row[result_key(col, ck)] <= clean + 1e-9
    # The parent carries the winner's numbers.
    parent = client(finalized["uri"]).get_run(finalized["parent"])
    assert parent.data.tags["rslad.final_winner"] == "t0001" == result.winner
    for k in keys:
        assert parent.data.metrics[k] == pytest.approx(runs.loc["t0001", k])


def test_finalize_resumes_and_evaluates_nothing_twice(finalized, tmp_path):
    again = finalize(NAME, finalized["uri"], top_k=TOP_K, aa_n=AA_N, device="cpu")
    assert again.evaluated == []
    assert len(again.skipped) == TOP_K * 2 * len(EVAL_COLUMNS)
    # A different AutoAttack size makes only the AutoAttack results stale (on a copy: the fixture stays at aa.n=16).
    other = copy_store(finalized, tmp_path)
    smaller = finalize(NAME, other["uri"], top_k=1, aa_n=8, device="cpu", columns=("clean", "autoattack"))
    assert smaller.evaluated == [("t0001", "best", AA), ("t0001", "last", AA)]
    assert smaller.skipped == [("t0001", "best", "clean"), ("t0001", "last", "clean")]
    tags = client(other["uri"]).get_run(finalized["trials"]["t0001"]["run_id"]).data.tags
    assert tags["test.best.autoattack"] == "8" and tags["test.aa_n"] == "8"


def test_finalize_continues_after_an_interruption(store, monkeypatch):
    import analysis.finalize as fin

    real = fin.per_image_correct
    calls = []

    def interrupted(model, images, labels, attacks, **kwargs):
        calls.append(attacks)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third result
        return real(model, images, labels, attacks, **kwargs)

    monkeypatch.setattr(fin, "per_image_correct", interrupted)  # where finalize calls it
    cols = ("clean", "fgsm", "pgd_sat")
    with pytest.raises(KeyboardInterrupt):
        finalize(NAME, store["uri"], top_k=1, device="cpu", columns=cols)
    monkeypatch.setattr(fin, "per_image_correct", real)
    resumed = finalize(NAME, store["uri"], top_k=1, device="cpu", columns=cols)
    assert resumed.skipped == [("t0001", "best", "clean"), ("t0001", "best", "fgsm")]
    assert resumed.evaluated == [("t0001", "best", "pgd_sat")] + [("t0001", "last", c) for c in cols]


def test_an_autoattack_subset_is_never_logged_as_autoattack(store):
    result = finalize(NAME, store["uri"], top_k=1, aa_n=AA_N, device="cpu", columns=("autoattack",),
                      aa_attacks=("apgd-ce",))
    assert result.evaluated == [("t0001", "best", AA_CUSTOM), ("t0001", "last", AA_CUSTOM)]
    run = client(store["uri"]).get_run(store["trials"]["t0001"]["run_id"])
    assert not any(k.startswith("test/autoattack") for k in run.data.metrics)
    assert {"test/aa_custom/best", "test/aa_custom/last"} <= set(run.data.metrics)
    assert run.data.tags["test.aa_custom.attacks"] == "apgd-ce" and "test.aa_n" not in run.data.tags


def test_aa_column_needs_the_adapter_flag_and_all_four_attacks():
    from trainables.attacks.autoattack import STANDARD_ATTACKS, AutoAttackResult

    assert aa_column(AutoAttackResult(0.5, 16, list(STANDARD_ATTACKS), "standard", True)) == AA
    assert aa_column(AutoAttackResult(0.5, 16, ["apgd-ce"], "custom", True)) == AA_CUSTOM
    assert aa_column(AutoAttackResult(0.5, 16, list(STANDARD_ATTACKS), "custom", False)) == AA_CUSTOM


# --- report ---------------------------------------------------------------------------------------
def md_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of a document as a list of {header: cell} rows."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
            block = []
    return tables


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width > 200 and height > 200


def test_report_table_matches_mlflow(finalized, tmp_path):
    result = build_report(NAME, finalized["uri"], tmp_path / "report", compare="paper")
    text = result.markdown.read_text()
    runs = load_runs(NAME, finalized["uri"]).set_index("trial_id")
    test_rows, val_rows = md_tables(text)[:2]
    assert [r["Trial"] for r in test_rows] == ["t0001", "t0002"]
    titles = {"clean": "Clean", "fgsm": "FGSM", "pgd_sat": "PGD_SAT", "pgd_trades": "PGD_TRADES", "cw_inf": "CW_inf",
              "autoattack": "AA"}
    for r in test_rows:
        for col, title in titles.items():
            for ck in ("best", "last"):
                assert r[f"{ck.capitalize()} {title}"] == f"{100 * runs.loc[r['Trial'], result_key(col, ck)]:.2f}"
        assert r["best_val_pgd_acc (%)"] == f"{100 * runs.loc[r['Trial'], 'best_val_pgd_acc']:.2f}"
    assert "Selection metric**: `best_val_pgd_acc` (max)" in text
    assert ("**Checkpoint selection**: every trial kept its best epoch by the cheap validation PGD (CE, uniform "
            "start, 10 steps of 0.025) on a held-out split of 300 training images") in text
    assert "**fp32** (train.amp=false, or not on CUDA)" in text and "bf16" not in text
    assert "**T3 = T(x')** (t0003, t0005)" in text and "44-46 %" in text
    assert [r["Trial"] for r in val_rows] == ["t0001", "t0002", "t0004", "t0003", "t0005"]
    for r in val_rows:
        tid = r["Trial"]
        assert r["Test"] == ("finalized" if tid in ("t0001", "t0002") else "not finalized")
        assert r["Epochs run"] == f"{runs.loc[tid, 'epochs_run']}/{EPOCHS}"
        pgd = dict(TRIALS_BY_ID[tid])["pgd"]
        assert r["best_val_pgd_acc (%)"] == f"{100 * max(pgd):.2f}"
        assert r["Val clean @best (%)"] == f"{100 * val_clean(max(pgd)):.2f}"
    assert val_rows[-1]["Rank"] == "–" and val_rows[-1]["Status"].startswith("failed")
    # ASHA: t0003 stopped after 1 of 4 epochs, t0004 after 2 -> 5 trial-epochs saved; 12 of 20 run.
    assert (result.asha.saved_by_asha, result.asha.trial_epochs_run, result.asha.full_budget) == (5, 12, 20)
    assert "saved **5 trial-epochs** (25.0%)" in text and "12 of 20 trial-epochs run" in text
    assert "No published row matches any trial" in text and "dataset = digits" in text
    assert set(result.figures) == {"k", "teacher", "rsl_source", "pareto", "learning_curves", "importances"}
    for path in result.figures.values():
        assert is_png(path) and f"]({path.name})" in text
    listed = {a.path for a in client(finalized["uri"]).list_artifacts(finalized["parent"], "report")}
    assert "report/report.md" in listed and "report/fig_k.png" in listed


TRIALS_BY_ID = {t[0]: {"pgd": t[5]} for t in TRIALS}


def test_report_of_an_unfinalized_search_says_so_and_skips_what_it_cannot_draw(store, tmp_path):
    result = build_report(NAME, store["uri"], tmp_path / "r", log_artifacts=False)
    text = result.markdown.read_text()
    assert "No trial is finalized yet" in text and "Its validation numbers (%, not finalized)" in text
    val_rows = md_tables(text)[0]
    assert len(val_rows) == len(TRIALS) and {r["Test"] for r in val_rows} == {"not finalized"}
    runs = load_runs(NAME, store["uri"])
    same_alpha = runs.assign(alpha=0.5, k=1.0)
    with pytest.raises(plots.FigureSkipped, match="alpha did not vary"):
        plots.plot_k(same_alpha)
    one_param = runs.drop(columns=["search.rsl_source", "search.teacher"])
    fig = plots.plot_importances(one_param)
    assert "no importances" in fig._suptitle.get_text()
    with pytest.raises(plots.FigureSkipped, match="fewer than 2 teachers"):
        plots.plot_teacher(runs.assign(teacher="digits_cnn_small_trades"))


def test_paper_rows_match_on_the_paper_setting_only():
    rslad = {"dataset": "cifar10", "student": "resnet18", "method": "rslad", "teacher_arch": "wrn34_10",
             "rsl_source": "nat-nat-nat", "alpha": 5 / 6, "eps": 8 / 255, "epochs": 300}
    best = paper.match_rows(rslad)[0]
    assert best.best == {"clean": 83.38, "fgsm": 60.01, "pgd_sat": 54.24, "pgd_trades": 55.94, "cw_inf": 53.30,
                         "autoattack": 51.49}
    assert paper.match_rows({**rslad, "rsl_source": "adv-adv-adv"})[0].best["autoattack"] == 49.79
    assert paper.match_rows({**rslad, "teacher_arch": "wrn70_16"})[0].best["autoattack"] == 50.27
    assert paper.match_rows({**rslad, "alpha": 0.5}) == []
    assert paper.match_rows({**rslad, "eps": 0.1}) == []
    sat = {"dataset": "cifar10", "student": "resnet18", "method": "sat", "teacher_arch": None, "eps": 8 / 255}
    assert paper.match_rows({**sat, "epochs": 280})[0].label == "SAT-300"
    assert paper.match_rows({**sat, "epochs": 100})[0].label == "SAT"
    assert paper.match_rows({**rslad, "dataset": "digits", "student": "cnn_small"}) == []
    assert paper.canonical_arch("WideResNet-34-10") == paper.canonical_arch("wrn34_10") == "wrn34_10"
    assert paper.canonical_arch("wrn34_20_swish") == "wrn34_20" and paper.canonical_arch("RN-18") == "resnet18"


def test_compare_section_gives_the_difference_in_points():
    from analysis.report import compare_section

    row = {"trial_id": "t9", "dataset": "cifar10", "student": "resnet18", "method": "rslad",
           "teacher": "wrn34_10_trades", "rsl_source": "nat-nat-nat", "alpha": 5 / 6, "eps": 8 / 255, "epochs": 300,
           **{result_key(c, ck): 0.5 for c in EVAL_COLUMNS for ck in ("best", "last")}}
    row[result_key("clean", "best")] = 0.8400
    rows = md_tables("\n".join(compare_section(pd.DataFrame([row]))))[0]
    diff = [r for r in rows if r["Row"] == "difference (points)" and r["Checkpoint"] == "best"][0]
    assert diff["Clean"] == "+0.62" and diff["AA"] == "-1.49"
    assert any("Tables 2-4" in r["Row"] for r in rows)


def test_selection_rule_is_read_from_the_trial_params():
    from analysis.report import selection_rules

    paper_rule = pd.DataFrame([{"trial_id": "a", "val_attack": "pgd_trades", "val_size": 0},
                               {"trial_id": "b", "val_attack": "pgd_trades", "val_size": 0}])
    assert selection_rules(paper_rule) == [
        "**Checkpoint selection**: every trial kept its best epoch by PGD_TRADES (PGD-20 on CE, step 0.003, uniform "
        "start) on the test set, so best-checkpoint numbers are test-selected (the reference code's rule, as in the "
        "paper)."]
    mixed = pd.DataFrame([{"trial_id": "a", "val_attack": "pgd", "val_size": 1000, "val_attack_steps": 10,
                           "attack_step_size": 2 / 255},
                          {"trial_id": "b", "val_attack": "cw_inf", "val_size": 500}])
    lines = selection_rules(mixed)
    assert len(lines) == 2 and all(line.startswith("**Checkpoint selection** differs between trials") for line in lines)
    assert "10 steps of 0.007843) on a held-out split of 1000 training images" in lines[0] and lines[0].endswith("for a.")
    assert "CW_inf (PGD-30 on the CW margin, step 2/255) on a held-out split of 500" in lines[1]
    # runs recorded before val_attack existed: the cheap PGD
    assert "the cheap validation PGD" in selection_rules(pd.DataFrame([{"trial_id": "a", "val_size": 1000}]))[0]


def test_numerics_notes_state_what_bf16_and_recipe_scaling_did():
    from analysis.report import numerics_notes

    # a trial ran on CUDA when it logged GPU memory; the second follows a recipe at the paper's scale
    gpu = pd.DataFrame([{"trial_id": "a", "amp": True, "device": "auto", "method": "rslad", "rsl_source": "nat-nat-nat",
                         "recipe": "sat", "recipe_scale": 8 / 300, "gpu_mem_peak_gb": 3.2},
                        {"trial_id": "b", "amp": True, "device": "auto", "method": "sat", "rsl_source": "nat-nat-nat",
                         "recipe": "trades", "recipe_scale": 1.0, "gpu_mem_peak_gb": 3.0}])
    notes = "\n".join(numerics_notes(gpu))
    assert "bf16 (train.amp=true)" in notes and "5.5 % of the x' elements and the gradient by 1.8 %" in notes
    assert "train.amp=false" in notes and "T3 = T(x')" not in notes and "**fp32**" not in notes
    assert "Recipes at 0.02667 of their published length** (sat)" in notes
    fp32 = ["- **fp32** (train.amp=false, or not on CUDA): training and attacks in fp32, "
            "the control for a headline reproduction."]
    control = pd.DataFrame([{"trial_id": "a", "amp": False, "device": "cuda", "recipe": "", "recipe_scale": 1.0,
                             "gpu_mem_peak_gb": 3.2}])
    assert numerics_notes(control) == fp32
    # amp=true with device=auto on a machine without CUDA trained in fp32: no GPU memory was logged
    cpu = pd.DataFrame([{"trial_id": "a", "amp": True, "device": "auto", "recipe": "", "recipe_scale": 1.0,
                         "gpu_mem_peak_gb": float("nan")}])
    assert numerics_notes(cpu) == fp32


def test_compare_puts_each_recipe_beside_its_table4_row():
    from analysis.report import compare_section, trial_setting

    base = {"dataset": "cifar10", "student": "resnet18", "teacher": "none", "eps": 8 / 255,
            **{result_key(c, ck): 0.5 for c in EVAL_COLUMNS for ck in ("best", "last")}}
    trials = pd.DataFrame([
        {**base, "trial_id": "s", "method": "sat", "recipe": "sat", "epochs": 100},
        # a -300 recipe scaled down to 100 epochs is still the -300 row, not the 100-epoch one
        {**base, "trial_id": "s3", "method": "sat", "recipe": "sat_300", "recipe_scale": 1 / 3, "epochs": 100},
        {**base, "trial_id": "i", "method": "iad", "recipe": "iad", "teacher": "wrn34_10_trades", "epochs": 200},
    ])
    rows = md_tables("\n".join(compare_section(trials)))[0]
    published = [r["Row"] for r in rows if r["Row"].startswith("Table")]
    assert published == ["Table 4: SAT"] * 2 + ["Table 4: SAT-300"] * 2 + ["Table 4: IAD"] * 2
    assert paper.match_rows(trial_setting(trials.iloc[1]))[0].label == "SAT-300"


# --- command line ---------------------------------------------------------------------------------
def test_parse_args_defaults_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse_args(["name=x"], ("name", "top_k", "aa.n", "tracking.uri", "select", "device"))
    assert args == {"name": "x", "top_k": 3, "aa.n": 1000, "tracking.uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
                    "select": "best_val_pgd_acc", "device": "auto"}
    assert tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(SearchConfigError, match=r"unknown key 'bogus'; allowed keys: name, top_k"):
        parse_args(["name=x", "bogus=1"], ("name", "top_k"))
    with pytest.raises(SearchConfigError, match="top_k='three' must be an integer"):
        parse_args(["name=x", "top_k=three"], ("name", "top_k"))
    with pytest.raises(SearchConfigError, match="missing name="):
        parse_args([], ("name",))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd),
                               "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_cli_unknown_key_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("analysis.report", "name=x", "colour=red", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'colour'" in proc.stderr and "allowed keys" in proc.stderr


@pytest.mark.slow
def test_cli_unknown_experiment_is_one_line_and_exit_2(store, tmp_path):
    proc = run_cli("analysis.finalize", "name=nope", f"tracking.uri={store['uri']}", cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and "'nope'" in line and f"existing experiments: {NAME}" in line


@pytest.mark.slow
def test_cli_finalize_and_report_end_to_end(finalized, tmp_path):
    proc = run_cli("analysis.finalize", f"name={NAME}", f"top_k={TOP_K}", f"aa.n={AA_N}", "device=cpu",
                   f"tracking.uri={finalized['uri']}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "evaluated 0 result(s)" in proc.stderr and "t0001" in proc.stdout
    proc = run_cli("analysis.report", f"name={NAME}", "compare=paper", f"tracking.uri={finalized['uri']}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reports" / NAME / "report.md").is_file()
    assert re.search(r"report: .*report\.md", proc.stdout)
