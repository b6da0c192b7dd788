"""Numbers with error bars, wired end to end: what a replicate's seed changes, the interval columns of the search's and
finalize's tables, the report's verdicts on a clearly different and a clearly not different case, compare=paper's
inside/outside, and the resolution a dry run states. The formulas themselves are tested in test_stats.py."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import finalize as fin
from analysis import report, uncertainty
from analysis.runs import replicate_configurations, result_key
from analysis.uncertainty import Configuration, verdict_lines
from search.run import summary_table
from trainables.config import TrainConfig
from trainables.data import load_digits_tensors, load_splits
from trainables.loop import Training
from trainables.schema import EVAL_COLUMNS

DIGITS = dict(dataset="digits", student="cnn_small", method="natural", teacher="none", val_size=300,
              train_subset=256, batch_size=64, epochs=1, device="cpu")


# --- what a replicate's seed changes -------------------------------------------------------------
def test_the_default_order_seed_is_data_seed_so_existing_runs_keep_their_batches():
    cfg = TrainConfig(**DIGITS, data_seed=3)
    assert cfg.order_seed == -1 and cfg.epoch_order_seed == 3
    same = Training(cfg.replace(order_seed=3))
    default = Training(cfg)
    assert default.train_loader.seed == same.train_loader.seed == 3
    (xa, ya), (xb, yb) = next(default.train_loader.epoch(0)), next(same.train_loader.epoch(0))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_replicate_seed_changes_weights_and_batches_but_not_the_validation_split():
    base = TrainConfig(**DIGITS)
    replica = base.replace(seed=1, order_seed=base.epoch_order_seed + 1)  # what search.replicate does for seed +1
    a, b = load_splits(base), load_splits(replica)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_y, b.train_y)  # train_subset too: drawn by data_seed
    ta, tb = Training(base), Training(replica)
    (_, ya), (_, yb) = next(ta.train_loader.epoch(0)), next(tb.train_loader.epoch(0))
    assert not torch.equal(ya, yb), "another order seed gives other batches"
    wa, wb = (next(iter(t.model.parameters())) for t in (ta, tb))
    assert not torch.equal(wa, wb), "another seed gives other initial weights"


def test_replicate_specs_shift_both_seeds_seed_major_and_keep_the_split():
    from search.replicate import Finalist, ReplicatePlan, replicate_specs

    train = TrainConfig(**DIGITS, seed=4).to_dict()
    finalists = [Finalist("aaaa0001", 1, {"alpha_ratio": 5.0, "train": train}, 0.7),
                 Finalist("bbbb0002", 2, {"alpha_ratio": 1.0, "train": train}, 0.6)]
    search = SimpleNamespace(base_train={"rsl_cache_dir": "/cache"}, cfg=None, name="s", experiment_path="/r/s",
                             space=SimpleNamespace(metric="val_pgd_acc"))
    plan = ReplicatePlan(search, finalists, [1, 2])
    assert plan.path == "/r/s/replicates"
    specs = replicate_specs(plan)
    assert list(specs) == ["aaaa0001-s5", "bbbb0002-s5", "aaaa0001-s6", "bbbb0002-s6"]
    first = specs["aaaa0001-s5"]
    assert (first["of"], first["seed"], first["params"]) == ("aaaa0001", 5, {"alpha_ratio": 5.0})
    assert (first["train"]["seed"], first["train"]["order_seed"], first["train"]["data_seed"]) == (5, 1, 0)
    assert first["train"]["rsl_cache_dir"] == "/cache" and specs["bbbb0002-s6"]["train"]["order_seed"] == 2


# --- the search's final table --------------------------------------------------------------------
def _result(trial: str, best: float, val_size: int = 300) -> SimpleNamespace:
    history = pd.DataFrame({"epoch": [1, 2], "val_pgd_acc": [best - 0.1, best], "val_clean_acc": [0.8, 0.9]})
    return SimpleNamespace(metrics={"trial_id": trial, "best_val_pgd_acc": best, "epoch": 2},
                           metrics_dataframe=history,
                           config={"alpha_ratio": 5.0, "train": {"val_size": val_size, "dataset": "digits",
                                                                 "epochs": 2}})


def test_the_search_table_shows_each_trials_wilson_interval_and_the_resolution():
    table = summary_table([_result("t1", 0.66), _result("t2", 0.60)], "val_pgd_acc", 5)
    lines = table.splitlines()
    assert "95 % interval" in lines[0]
    # 198/300: centre (0.66 + 1.920729/300) / 1.0128049 = 0.657977, half 1.935173 * sqrt(0.000748 + 0.0000106707)
    # = 0.053303 -> [0.604674, 0.711280]
    assert lines[2].split()[3:6] == ["0.6600", "[0.605,", "0.711]"]
    footer = " ".join(lines[4:])
    assert "Wilson, from one run's 300 validation images" in footer
    assert "about 11.4 points" in footer and "python -m search.replicate" in footer


# --- finalize's tables ----------------------------------------------------------------------------
def _finalized_frame() -> pd.DataFrame:
    """Two finalists with two replicates each, finalized on 359 test images (AA on 100)."""
    rows = []
    for rank, (tid, base) in enumerate((("aaaa0001", 0.60), ("bbbb0002", 0.50)), 1):
        rows.append({"trial_id": tid, "run_id": f"r-{tid}", "status": "finished", "seed": 0, "replicate_of": None,
                     "replicate_seed": pd.NA, "search.alpha_ratio": 5.0 / rank, "val_size": 300, "dataset": "digits",
                     "best_val_pgd_acc": base + 0.05})
        for seed in (1, 2):
            rows.append({"trial_id": f"{tid[:4]}_0000{seed}", "run_id": f"r-{tid}-{seed}", "status": "finished",
                         "seed": seed, "replicate_of": tid, "replicate_seed": seed, "search.replicate": f"{tid}-s{seed}",
                         "search.alpha_ratio": 5.0 / rank, "val_size": 300, "dataset": "digits",
                         "best_val_pgd_acc": base + 0.01 * rank * seed})
    for row in rows:
        row.update({"test.n": "359", "test.aa_n": "100", "test.best.epoch": "8", "test.last.epoch": "8"})
        row.update({result_key(c, ck): row["best_val_pgd_acc"] - 0.02 for c in EVAL_COLUMNS for ck in ("best", "last")})
    frame = pd.DataFrame(rows)
    frame["replicate_seed"] = frame["replicate_seed"].astype("Int64")
    return frame


def test_finalize_tables_put_replicates_under_their_finalist_with_intervals():
    runs = _finalized_frame()
    order = fin.final_order(runs, ["aaaa0001", "bbbb0002"])
    assert order == ["aaaa0001", "aaaa_00001", "aaaa_00002", "bbbb0002", "bbbb_00001", "bbbb_00002"]
    table = fin.final_table(runs, order, "best_val_pgd_acc")
    assert list(table.columns[:6]) == ["rank", "trial", "seed", "ckpt", "epoch", "select"]
    assert table[table["ckpt"] == "best"][["rank", "seed"]].values.tolist() == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1],
                                                                                [2, 2]]
    intervals = fin.final_intervals(runs, order)
    first = intervals.iloc[0]
    # 0.63 of 359 -> 226/359 = 0.629526: centre (0.629526 + 0.0053502) / 1.0107004 = 0.628159, half 1.939213 *
    # sqrt(0.00064966 + 0.00000745) = 0.049710 -> [57.85, 67.79]
    assert first["Clean"] == "57.8-67.8"
    # AA on 100 images: 63/100: centre 0.6492073 / 1.0384146 = 0.625191, half 1.887458 * 0.049265 = 0.092986
    assert first["AA"] == "53.2-71.8"
    summaries = fin.replicate_summaries(runs, ["aaaa0001", "bbbb0002"], "best_val_pgd_acc")
    select = [r for r in summaries if r[2] == "select"]
    # the search's run: 195/300: centre 0.6564024 / 1.0128049 = 0.648104, half 1.935173 * sqrt(0.00075833 +
    # 0.00001067) = 0.053665 -> [59.44, 70.18]; replicates 0.61, 0.62: mean 61.5, sd 0.707 points, t(0.975, 1) =
    # 12.706205 -> +-6.35 points
    assert select[0][:7] == ["1", "alpha_ratio=5 (aaaa0001)", "select", "65.0 [59.4, 70.2]", "2", "61.5",
                             "0.71"]
    assert select[0][7] == "[55.1, 67.9]"


def test_the_printed_tables_fit_with_replicates():
    runs = _finalized_frame()
    order = fin.final_order(runs, ["aaaa0001", "bbbb0002"])
    for text in (fin.format_table(fin.final_table(runs, order, "best_val_pgd_acc")),
                 fin.final_intervals(runs, order).to_string(index=False)):
        assert max(len(line) for line in text.splitlines()) <= 100


# --- the verdict ------------------------------------------------------------------------------------
def test_verdict_on_a_clearly_different_and_a_clearly_not_different_case():
    winner = Configuration("a", "alpha_ratio=5 (a)", 1, values={1: 0.70, 2: 0.71, 3: 0.72})
    worse = Configuration("b", "alpha_ratio=1 (b)", 2, values={1: 0.60, 2: 0.61, 3: 0.615})
    # differences 0.10, 0.10, 0.105: mean 0.101667, sd 0.0028868, se 0.0016667, t(0.975, 2) = 4.302653
    # -> +-0.0071711: [9.4, 10.9] points
    (line,) = verdict_lines([worse, winner])
    assert line.startswith("alpha_ratio=5 (a) vs alpha_ratio=1 (b): +10.2 points (95 % CI +9.4 to +10.9, paired t")
    assert "3 paired seeds): distinguishable at the 5 % level, alpha_ratio=5 (a) is better" in line
    same = Configuration("c", "alpha_ratio=2 (c)", 2, values={1: 0.67, 2: 0.65, 3: 0.68})
    noisy = Configuration("a", "alpha_ratio=5 (a)", 1, values={1: 0.66, 2: 0.70, 3: 0.64})
    (line,) = verdict_lines([noisy, same])
    assert "+0.0 points (95 % CI -11.4 to +11.4, paired t p=1.00" in line  # not -0.0: the sum is 0 up to 1e-17
    assert line.endswith("not distinguishable at this sample size (the interval includes 0; this is not evidence "
                         "that they are equal)")
    lonely = Configuration("d", "alpha_ratio=3 (d)", 3)
    assert "cannot be judged: alpha_ratio=3 (d) has no replicates" in verdict_lines([noisy, lonely])[0]


class _Artifacts:
    """An MLflow client stand-in that serves per_image/<checkpoint>/<column>.npz of each run from memory."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        self.masks = masks

    def download_artifacts(self, run_id: str, path: str, folder: str) -> str:
        if run_id not in self.masks:
            raise FileNotFoundError(path)
        out = Path(folder) / "m.npz"
        np.savez(out, correct=np.packbits(self.masks[run_id]), n=len(self.masks[run_id]), epoch=8)
        return str(out)


def _report_lines(runs: pd.DataFrame, masks: dict[str, np.ndarray]) -> str:
    ranked = runs[runs["replicate_of"].isna()].reset_index(drop=True)
    lines, configs = report.uncertainty_section(_Artifacts(masks), ranked, runs, "best_val_pgd_acc")
    assert [c.trial_id for c in configs] == ["aaaa0001", "bbbb0002"]
    return "\n".join(lines)


def test_the_report_says_in_words_whether_the_winner_is_distinguishable():
    runs = _finalized_frame()
    rng = np.random.default_rng(0)
    good, bad = rng.random(359) < 0.9, rng.random(359) < 0.3  # two models far apart on the same 359 images
    masks = {"r-aaaa0001-1": good, "r-aaaa0001-2": good, "r-bbbb0002-1": bad, "r-bbbb0002-2": bad}
    text = _report_lines(runs, masks)
    assert "## Is the winner distinguishable from the runner-up?" in text
    assert "**Validation, `best_val_pgd_acc` (%)**" in text and "**Test set, PGD_TRADES, best checkpoint (%)**" in text
    # replicates 0.61/0.62 vs 0.52/0.54: differences 0.09, 0.08: mean 0.085, se 0.005, t(0.975, 1) = 12.706205
    # -> [2.15, 14.85] points; t = 17 on 1 df: p = 1 - 2 atan(17) / pi = 0.0374
    assert ("- alpha_ratio=5 (aaaa0001) vs alpha_ratio=2.5 (bbbb0002): +8.5 points (95 % CI +2.1 to +14.9, paired t "
            "p=0.037, 2 paired seeds): distinguishable at the 5 % level, alpha_ratio=5 (aaaa0001) is better") in text
    per_seed = [ln for ln in text.splitlines() if ln.startswith("- seed ")]
    assert len(per_seed) == 2 and all("McNemar exact p<0.001, 359 paired images): distinguishable" in ln
                                      for ln in per_seed)
    assert "the validation split of 300 images resolves differences of about 11.4 points" in text
    assert "the test set of 359 images resolves" in text


def test_the_report_without_replicates_says_how_to_get_them():
    runs = _finalized_frame()
    runs = runs[runs["replicate_of"].isna()].reset_index(drop=True)
    rng = np.random.default_rng(1)
    same = rng.random(359) < 0.6
    text = "\n".join(report.uncertainty_section(_Artifacts({"r-aaaa0001": same, "r-bbbb0002": same}),
                                                runs, runs, "best_val_pgd_acc")[0])
    assert "No replicates: every number above is one run with one seed" in text
    assert "python -m search.replicate name=<this search>" in text
    assert "+0.0 points (95 % CI -0.5 to +0.5, McNemar exact p=1.00, 359 paired images): not distinguishable" in text


def test_compare_paper_says_whether_the_published_number_is_inside_our_interval():
    row = {"trial_id": "t9", "run_id": "r9", "status": "finished", "dataset": "cifar10", "student": "resnet18",
           "method": "rslad", "teacher": "wrn34_10_trades", "rsl_source": "nat-nat-nat", "alpha": 5 / 6,
           "eps": 8 / 255, "epochs": 300, "test.n": "10000", "test.aa_n": "1000", "replicate_of": None,
           **{result_key(c, ck): 0.5 for c in EVAL_COLUMNS for ck in ("best", "last")}}
    row[result_key("clean", "best")] = 0.8400  # paper's clean (best): 83.38
    text = "\n".join(report.compare_section(pd.DataFrame([row])))
    best = next(ln for ln in text.splitlines() if ln.startswith("- trial `t9`, best checkpoint"))
    # 8400/10000: centre 0.84019207 / 1.00038415 = 0.839869, half 1.959211 * sqrt(1.344e-5 + 9.6e-9) = 0.0071852
    # -> [83.27, 84.71] holds the paper's 83.38; PGD_TRADES 5000/10000 -> [49.02, 50.98] misses it
    assert "Clean 83.38 inside [83.27, 84.71] (this run, Wilson on 10000 images)" in best
    assert re.search(r"PGD_TRADES \d+\.\d\d outside \[49\.02, 50\.98\]", best)


def test_replicate_configurations_leave_out_the_search_run_and_unfinished_replicates():
    runs = _finalized_frame()
    runs.loc[runs["trial_id"] == "bbbb_00002", "status"] = "interrupted"
    a, b = replicate_configurations(runs, ["aaaa0001", "bbbb0002"], "best_val_pgd_acc")
    assert a.values == {1: pytest.approx(0.61), 2: pytest.approx(0.62)} and a.selection == pytest.approx(0.65)
    assert a.selection_n == 300 and b.values == {1: pytest.approx(0.52)}
    assert math.isnan(b.summary.low), "one replicate: no interval"


# --- guidance -------------------------------------------------------------------------------------
def test_the_resolution_rule_with_the_paper_profiles_numbers():
    # (1.959964 + 0.841621) * sqrt(2 * 0.2475 / 1000) = 2.801585 * 0.022249 = 0.062332
    assert 100 * uncertainty.resolution(1000) == pytest.approx(6.23, abs=0.01)
    assert 100 * uncertainty.resolution(1000, seeds=3) == pytest.approx(3.60, abs=0.01)
    assert 100 * uncertainty.resolution(1000, seeds=3, seed_sd=0.01) == pytest.approx(4.26, abs=0.01)
    assert 100 * uncertainty.resolution(10000) == pytest.approx(1.97, abs=0.01)
    assert uncertainty.validation_images({"val_size": 0, "dataset": "digits"}) == len(load_digits_tensors()[3])
    assert uncertainty.validation_images({"val_size": 0, "dataset": "cifar10"}) == 10_000


def test_a_dry_run_states_what_the_validation_split_resolves(tmp_path):
    from search.plan import describe, plan_search

    plan = plan_search(["space=alpha", "profile=smoke", "name=dry", f"storage={tmp_path}"], cwd=tmp_path)
    text = " ".join(describe(plan, {"digits_cnn_medium_trades": "train"}).split())
    assert ("resolution the validation split of 300 images resolves differences of about 11.4 points or more between "
            "two single runs") in text
    assert "3 seeds per configuration: about 6.6 points" in text and "python -m search.replicate name=dry" in text
