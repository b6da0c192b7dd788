"""A search's report from MLflow: supplement-shaped tables, a summary, the figures, optionally the paper's rows beside.

    python -m analysis.report name=<experiment> [out=reports/<name>] [compare=paper|none]
                              [select=best_val_pgd_acc] [top_k=3] [tracking.uri=sqlite:///<cwd>/mlruns.db]

Writes <out>/report.md and PNG figures, and logs the folder under `report/` of the search's
parent run so it shows in MLflow's UI. top_k sets how many trials the learning-curve figure
highlights.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from analysis import paper, plots
from analysis.options import run_command
from analysis.runs import (
    CHECKPOINTS,
    DEFAULT_SELECT,
    client_for,
    find_parent_run,
    is_replicate,
    load_history,
    load_runs,
    per_image,
    rank_trials,
    replicate_configurations,
    replicates_of,
    result_key,
    selection_mode,
    test_images,
)
from analysis.stats import paired_difference, verdict
from analysis.uncertainty import (
    REPLICATE_HEADERS,
    Configuration,
    accuracy_interval,
    interval_text,
    label_of,
    pooled_seed_sd,
    replicate_rows,
    resolution_sentence,
    validation_images,
    verdict_lines,
    verdict_summary,
)
from trainables.config import TrainConfig, config_fields
from trainables.schema import COLUMN_TITLES, EVAL_COLUMNS
from trainables.teachers import get_teacher

log = logging.getLogger(__name__)

FIGURES: dict[str, str] = {
    "k": "fig_k.png",
    "teacher": "fig_teacher.png",
    "rsl_source": "fig_rsl_source.png",
    "pareto": "fig_pareto.png",
    "learning_curves": "fig_learning_curves.png",
    "importances": "fig_importances.png",
}
FIGURE_TITLES = {
    "k": "Robust accuracy vs. k = alpha/(1-alpha) (supplement Fig. 1)",
    "teacher": "Student vs. teacher robustness (supplement Table 2)",
    "rsl_source": "RSL source comparison (supplement Table 3)",
    "pareto": "Clean vs. robust accuracy, Pareto front",
    "learning_curves": "Learning curves with ASHA's stopping points",
    "importances": "Parameter importances",
}
# TrainConfig fields that differ between trials for reasons that are not a setting (paths, devices).
BOOKKEEPING = ("data_dir", "teachers_dir", "teacher_checkpoint", "device", "num_threads", "download")
MISSING = "–"


@dataclass
class AshaSavings:
    """Trial-epochs actually run against every trial running its whole schedule."""

    trials: int
    trial_epochs_run: int
    full_budget: int
    saved_by_asha: int
    stopped_early: int
    short_other: int
    """Epochs not run by failed or still-running trials (not ASHA's doing)."""


@dataclass
class ReportResult:
    """Where the report went and what it contains."""

    folder: Path
    markdown: Path
    figures: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    asha: AshaSavings | None = None
    winner: str | None = None
    logged_to: str | None = None


# --- numbers -------------------------------------------------------------------------------------
def pct(value: Any) -> str:
    """A fraction as a percentage with 2 decimals; a dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return MISSING
    return f"{100 * float(value):.2f}"


def fmt(value: Any) -> str:
    """A setting value for a table cell."""
    if value is None or (not isinstance(value, (str, tuple, list)) and pd.isna(value)):
        return MISSING
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def asha_savings(runs: pd.DataFrame) -> AshaSavings:
    """Trial-epochs run vs the full budget (sum of each trial's own epochs); ASHA's share is what stopped_early trials skipped."""
    run = runs["epochs_run"].fillna(0).astype(int)
    budget = runs["epochs"].astype(int) if "epochs" in runs.columns else run
    short = (budget - run).clip(lower=0)
    stopped = runs["status"] == "stopped_early"
    other = runs["status"].isin(["failed", "running", "interrupted"])
    return AshaSavings(trials=len(runs), trial_epochs_run=int(run.sum()), full_budget=int(budget.sum()),
                       saved_by_asha=int(short[stopped].sum()), stopped_early=int(stopped.sum()),
                       short_other=int(short[other].sum()))


def varying_settings(runs: pd.DataFrame) -> list[str]:
    """TrainConfig fields whose value differs between trials (k added after alpha); searched params if none differ."""
    cols = [f for f in config_fields()
            if f in runs.columns and f not in BOOKKEEPING and runs[f].astype(str).nunique() > 1]
    if "alpha" in cols and "k" in runs.columns:
        cols.insert(cols.index("alpha") + 1, "k")
    return cols or [c for c in runs.columns if c.startswith("search.")]


def is_finalized(row: pd.Series) -> bool:
    """Whether any test/* result was logged for the trial."""
    return any(pd.notna(row.get(result_key(c, ck))) for c in (*EVAL_COLUMNS, "aa_custom") for ck in CHECKPOINTS)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ordered(runs: pd.DataFrame, select: str, mode: str) -> tuple[pd.DataFrame, int]:
    """Ranked trials first (best first), then failed / unscored ones."""
    ranked = rank_trials(runs, select, mode)
    rest = runs[~runs["run_id"].isin(ranked["run_id"])].sort_values("trial_id")
    return pd.concat([ranked, rest], ignore_index=True), len(ranked)


# --- sections ------------------------------------------------------------------------------------
def test_table(ordered: pd.DataFrame, n_ranked: int, settings: Sequence[str], select: str) -> tuple[str, list[str]]:
    """The supplement-shaped table (best and last checkpoint x every column, %) of the finalized trials."""
    has_custom = any(result_key("aa_custom", ck) in ordered.columns for ck in CHECKPOINTS)
    columns = [*EVAL_COLUMNS, *(["aa_custom"] if has_custom else [])]
    headers = ["Rank", "Trial", *settings, f"{select} (%)"]
    headers += [f"{ck.capitalize()} {COLUMN_TITLES[c]}" for ck in CHECKPOINTS for c in columns]
    rows, finalized = [], []
    for i, row in ordered.iterrows():
        if not is_finalized(row):
            continue
        finalized.append(row["trial_id"])
        rank = str(i + 1) if i < n_ranked else MISSING
        rows.append([rank, row["trial_id"], *(fmt(row.get(s)) for s in settings), pct(row.get(select)),
                     *(pct(row.get(result_key(c, ck))) for ck in CHECKPOINTS for c in columns)])
    return (_md_table(headers, rows) if rows else "_No trial is finalized yet: run `python -m analysis.finalize "
            "name=<experiment>` for the test-set table._"), finalized


def validation_table(ordered: pd.DataFrame, n_ranked: int, settings: Sequence[str], select: str,
                     clean: pd.Series) -> str:
    """Every trial on the validation split: status, epochs, val clean at the best epoch, the selection metric, finalized or not."""
    headers = ["Rank", "Trial", *settings, "Status", "Epochs run", "Best epoch", "Val clean @best (%)",
               f"{select} (%)", "95 % interval (Wilson)", "Test"]
    rows = []
    for i, row in ordered.iterrows():
        epochs = f"{fmt(row.get('epochs_run'))}/{fmt(row.get('epochs'))}"
        status = row["status"] + (f" ({row['error']})" if row["status"] == "failed" and row.get("error") else "")
        value, n = row.get(select), validation_images(row)
        interval = accuracy_interval(value, n) if n and "acc" in select and pd.notna(value) and 0 <= value <= 1 \
            else None
        rows.append([str(i + 1) if i < n_ranked else MISSING, row["trial_id"], *(fmt(row.get(s)) for s in settings),
                     status, epochs, fmt(row.get("best_epoch")), pct(clean.get(i)), pct(row.get(select)),
                     interval_text(interval, 2), "finalized" if is_finalized(row) else "not finalized"])
    return _md_table(headers, rows)


AA_TAGS = (("test.aa_n", "test.aa_version", "test.aa_attacks", "AA = AutoAttack"),
           ("test.aa_custom.n", "test.aa_custom.version", "test.aa_custom.attacks", "AA subset (NOT AutoAttack)"))


def _wilson_widths(runs: pd.DataFrame) -> str:
    """'+-1.0 points on 10000 test images, +-3.1 on AA's 1000': the widest Wilson half-width of the test numbers."""
    parts = []
    for column, what in ((HEADLINE, "test images"), ("autoattack", "for AA")):
        ns = sorted({n for _, row in runs.iterrows() if (n := test_images(row, column))})
        if ns:
            half = 100 * max(accuracy_interval(0.5, n).high - 0.5 for n in ns)
            parts.append(f"+-{half:.1f} points on {'/'.join(map(str, ns))} {what}" if column == HEADLINE
                         else f"+-{half:.1f} points {what} (on {'/'.join(map(str, ns))})")
    return ", ".join(parts)


def _distinct(runs: pd.DataFrame, column: str) -> list[str]:
    return sorted({str(v) for v in runs[column].dropna()}) if column in runs.columns else []


def _aa_provenance(runs: pd.DataFrame) -> str:
    """How the test columns were computed for the finalized trials, from their test.* tags."""
    parts = []
    for n_key, version_key, attacks_key, label in AA_TAGS:
        ns = _distinct(runs, n_key)
        if ns:
            parts.append(f"{label} (version {'/'.join(_distinct(runs, version_key))}: "
                         f"{'; '.join(_distinct(runs, attacks_key))}) on the first {'/'.join(ns)} test images")
    n_test = _distinct(runs, "test.n")
    if n_test:
        parts.append(f"Clean, FGSM, PGD_SAT, PGD_TRADES, CW_inf on all {'/'.join(n_test)} test images")
        aa_ns = {int(n) for n in _distinct(runs, "test.aa_n") + _distinct(runs, "test.aa_custom.n") if n.isdigit()}
        if any(n < min(int(t) for t in n_test if t.isdigit()) for n in aa_ns):
            # Different image sets: AA can exceed another column without any attack being wrong.
            parts.append("AA uses a subset, so compare AA with AA only")
    eps = sorted({float(v) for v in runs["test.eps"].dropna()}) if "test.eps" in runs.columns else []
    if eps:
        parts.append("eps = " + "/".join(f"{e:.4g}" for e in eps))
    return "; ".join(parts)


def summary(ordered: pd.DataFrame, n_ranked: int, settings: Sequence[str], select: str, mode: str,
            winner: str | None, savings: AshaSavings, clean: pd.Series) -> list[str]:
    """Markdown lines: the best setting and its numbers, and the trial-epochs ASHA saved."""
    lines = []
    if n_ranked:
        best_id = winner if winner in set(ordered["trial_id"]) else ordered.iloc[0]["trial_id"]
        i = ordered.index[ordered["trial_id"] == best_id][0]
        row = ordered.loc[i]
        setting = ", ".join(f"{s}={fmt(row.get(s))}" for s in settings) or "(no setting varied)"
        how = "the finalized winner" if winner == best_id else f"rank 1 by {select}"
        lines.append(f"- **Best setting**: trial `{best_id}` ({how}): {setting}.")
        if is_finalized(row):
            nums = ", ".join(f"{COLUMN_TITLES[c]} {pct(row.get(result_key(c, 'best')))}" for c in EVAL_COLUMNS)
            last = ", ".join(f"{COLUMN_TITLES[c]} {pct(row.get(result_key(c, 'last')))}" for c in EVAL_COLUMNS)
            lines.append(f"- Its test numbers (%): best checkpoint {nums}; last checkpoint {last}.")
        else:
            lines.append(f"- Its validation numbers (%, not finalized): clean {pct(clean.get(i))} at the best epoch, "
                         f"{select} {pct(row.get(select))}.")
        fin = ordered.head(n_ranked)
        fin = fin[fin.apply(is_finalized, axis=1)]
        aa = result_key("autoattack", "best")
        if len(fin) >= 2 and aa in fin.columns and fin[aa].notna().all():
            by_aa = fin.sort_values(aa, ascending=False)["trial_id"].tolist()
            if by_aa != fin["trial_id"].tolist():
                lines.append(f"- Note: among the finalized trials the AutoAttack order ({', '.join(by_aa)}) differs from "
                             f"the {select} order ({', '.join(fin['trial_id'])}).")
    else:
        lines.append(f"- No trial has {select}; nothing to rank.")
    s = savings
    share = 100 * s.saved_by_asha / s.full_budget if s.full_budget else 0.0
    ran = 100 * s.trial_epochs_run / s.full_budget if s.full_budget else 0.0
    lines.append(f"- **Compute**: {s.trial_epochs_run} of {s.full_budget} trial-epochs run ({ran:.1f}% of running all "
                 f"{s.trials} trials to the end); ASHA stopped {s.stopped_early} trial(s) early and saved "
                 f"**{s.saved_by_asha} trial-epochs** ({share:.1f}%).")
    if s.short_other:
        lines.append(f"- {s.short_other} further trial-epochs were not run by failed, interrupted or still-running trials "
                     "(not counted as ASHA savings).")
    return lines


# The validation attacks (train.val_attack), as the selection-rule line names them.
VAL_ATTACK_TEXT = {
    "pgd": "the cheap validation PGD (CE, uniform start, {steps} steps of {step:.4g})",
    "pgd_trades": "PGD_TRADES (PGD-20 on CE, step 0.003, uniform start)",
    "pgd_sat": "PGD_SAT (PGD-20 on CE, step 2/255, uniform start)",
    "fgsm": "FGSM (one step of eps on CE)",
    "cw_inf": "CW_inf (PGD-30 on the CW margin, step 2/255)",
}


def _setting(row: pd.Series, key: str, default: Any) -> Any:
    value = row.get(key, default)
    return default if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def selection_rules(runs: pd.DataFrame) -> list[str]:
    """How each trial's best checkpoint (and val_pgd_acc) was chosen, from its params; one sentence per distinct rule."""
    rules: dict[str, list[str]] = {}
    for _, row in runs.iterrows():
        # Runs recorded before train.val_attack existed used the cheap PGD.
        attack = str(_setting(row, "val_attack", "pgd"))
        size = int(_setting(row, "val_size", TrainConfig.val_size))
        text = VAL_ATTACK_TEXT.get(attack, attack).format(
            steps=int(_setting(row, "val_attack_steps", TrainConfig.val_attack_steps)),
            step=float(_setting(row, "attack_step_size", TrainConfig.attack_step_size)))
        if size == 0:
            where = "on the test set, so best-checkpoint numbers are test-selected"
            if attack == "pgd_trades":
                where += " (the reference code's rule, as in the paper)"
        else:
            where = f"on a held-out split of {size} training images (the test set plays no part in selection)"
        rules.setdefault(f"{text} {where}", []).append(str(row["trial_id"]))
    if len(rules) == 1:
        return [f"**Checkpoint selection**: every trial kept its best epoch by {next(iter(rules))}."]
    return [f"**Checkpoint selection** differs between trials: {rule} for {', '.join(ids)}."
            for rule, ids in rules.items()]


def numerics_notes(runs: pd.DataFrame) -> list[str]:
    """What the bf16 (amp) and T(x') choices of these trials do to their numbers, with the measured figures."""
    lines = []
    # amp acts only on CUDA: a trial ran on CUDA when it logged GPU memory (device=auto decides only at run time).
    amp = {bool(_setting(row, "amp", TrainConfig.amp)) and pd.notna(row.get("gpu_mem_peak_gb"))
           for _, row in runs.iterrows()}
    if True in amp:
        lines.append("- **bf16 (train.amp=true)**: on a CUDA device, training and the inner attack ran under bf16 "
                     "autocast (evaluation is fp32; on a CPU amp does nothing). Emulated on a CPU against fp32, one "
                     "RSLAD step changes 5.5 % of the x' elements and the gradient by 1.8 %; the effect on final "
                     "accuracy is not measured here (`python -m benchmarks.gpu_check` measures it on a GPU). For a "
                     "headline reproduction run with train.amp=false.")
    if False in amp:
        lines.append("- **fp32** (train.amp=false, or not on CUDA): training and attacks in fp32, the control for a "
                     "headline reproduction.")
    t3_adv = sorted({str(row["trial_id"]) for _, row in runs.iterrows()
                     if _setting(row, "method", "") == "rslad" and str(_setting(row, "rsl_source", "")).endswith("-adv")})
    if t3_adv:
        lines.append(f"- **T3 = T(x')** ({', '.join(t3_adv)}): the inner attack uses the teacher's soft label on the "
                     "moving x' as a constant target at each step, without a gradient through the teacher (the paper "
                     "and its code do not say which); the other reading changes 44-46 % of the x' elements.")
    scales = {(str(_setting(row, "recipe", "")), float(_setting(row, "recipe_scale", 1.0)))
              for _, row in runs.iterrows() if _setting(row, "recipe", "")}
    scaled = {(name, scale) for name, scale in scales if not math.isclose(scale, 1.0)}
    short = sorted({name for name, _ in scaled})
    if short:
        ratio = "/".join(sorted({f"{scale:.4g}" for _, scale in scaled}))
        lines.append(f"- **Recipes at {ratio} of their published length** ({', '.join(short)}): the base schedule "
                     "was shorter than the paper's 300 epochs, so every recipe ran a proportional short version.")
    return lines


def trial_setting(row: pd.Series) -> dict[str, Any]:
    """A trial's setting in paper.match_rows' vocabulary (teacher as its canonical architecture)."""
    teacher = row.get("teacher")
    arch = None
    if isinstance(teacher, str) and teacher != "none":
        try:
            arch = get_teacher(teacher).arch
        except KeyError:
            arch = teacher
    return {"dataset": row.get("dataset"), "student": row.get("student"), "method": row.get("method"),
            "teacher": teacher, "teacher_arch": arch, "rsl_source": row.get("rsl_source"), "alpha": row.get("alpha"),
            "eps": row.get("eps"), "epochs": row.get("epochs"), "recipe": _setting(row, "recipe", "")}


def compare_section(ordered: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[str]:
    """The supplement's rows beside matching trials, with the difference in points, and whether each published number
    lies inside our 95 % interval (`runs`: every run, replicates included); says so when nothing matches."""
    lines = ["## Comparison with the paper (RSLAD supplement)", ""]
    matched = [(row, paper.match_rows(trial_setting(row))) for _, row in ordered.iterrows()]
    matched = [(row, rows[0]) for row, rows in matched if rows]
    if not matched:
        seen = {k: sorted({str(v) for v in ordered.get(k, pd.Series(dtype=str)).dropna()})
                for k in ("dataset", "student", "method")}
        lines.append("No published row matches any trial of this search. The supplement's rows are CIFAR-10, "
                     "ResNet-18 students at eps 8/255 (RSLAD with alpha = 5/6 and a listed teacher and RSL source, "
                     "or a Table 4 baseline); this search has " +
                     ", ".join(f"{k} = {'/'.join(v) or '?'}" for k, v in seen.items()) + ".")
        return lines
    headers = ["Trial", "Row", "Checkpoint", *(COLUMN_TITLES[c] for c in EVAL_COLUMNS), "Note"]
    rows = []
    for row, prow in matched:
        note = f"paper {prow.setting['epochs']} epochs, trial {fmt(row.get('epochs'))}" \
            if prow.setting.get("epochs") != row.get("epochs") else ""
        for ck in CHECKPOINTS:
            published = prow.best if ck == "best" else prow.last
            if not published:
                continue
            ours = {c: row.get(result_key(c, ck)) for c in EVAL_COLUMNS}
            if not is_finalized(row):
                rows.append([row["trial_id"], "this run", ck, *(MISSING for _ in EVAL_COLUMNS), "not finalized"])
            else:
                rows.append([row["trial_id"], "this run", ck, *(pct(ours[c]) for c in EVAL_COLUMNS), note])
            rows.append(["", f"{prow.source}: {prow.label}", ck,
                         *(f"{published[c]:.2f}" if c in published else MISSING for c in EVAL_COLUMNS), ""])
            if is_finalized(row):
                rows.append(["", "difference (points)", ck, *(
                    f"{100 * float(ours[c]) - published[c]:+.2f}" if c in published and pd.notna(ours[c]) else MISSING
                    for c in EVAL_COLUMNS), ""])
    lines.append(_md_table(headers, rows))
    inside = [(row["trial_id"], ck, _inside_lines(runs if runs is not None else ordered, row, ck, published))
              for row, prow in matched if is_finalized(row)
              for ck, published in (("best", prow.best), ("last", prow.last)) if published]
    inside = [(t, ck, text) for t, ck, text in inside if text]
    if inside:
        lines += ["", "Is the paper's number inside our 95 % interval?", ""]
        lines += [f"- trial `{t}`, {ck} checkpoint: {text}." for t, ck, text in inside]
    return lines


# --- uncertainty: replicates, verdicts, resolution -----------------------------------------------
HEADLINE = "pgd_trades"
"""The test column the verdict is given for (the supplement's PGD^TRADES: on the whole test set, and per image)."""


def _replicate_table(configs: Sequence[Configuration]) -> str:
    return _md_table(REPLICATE_HEADERS, replicate_rows(configs, digits=2))


def _seed_run(runs: pd.DataFrame, trial_id: str, seed: int) -> str | None:
    reps = replicates_of(runs, [trial_id])
    found = reps[reps["replicate_seed"] == seed]
    return str(found.iloc[0]["run_id"]) if len(found) else None


def mcnemar_lines(client: Any, runs: pd.DataFrame, winner: Configuration, other: Configuration,
                  column: str = HEADLINE, checkpoint: str = "best") -> list[str]:
    """For each seed both configurations ran: the two models on the same test images (per-image correctness that
    finalize stored), McNemar's exact test; empty when the files are missing."""
    lines = []
    for seed in sorted(set(winner.values) & set(other.values)):
        ids = (_seed_run(runs, winner.trial_id, seed), _seed_run(runs, other.trial_id, seed))
        if None in ids:
            continue
        a, b = (per_image(client, run_id, checkpoint, column) for run_id in ids)
        if a is None or b is None or len(a) != len(b):
            continue
        lines.append(f"seed {seed}: " + verdict(winner.label, other.label, paired_difference(a, b)))
    return lines


def single_run_lines(client: Any, ranked: pd.DataFrame, column: str = HEADLINE) -> list[str]:
    """Without replicates: the search's top run against each of the next (best checkpoints, same test images)."""
    fin = ranked[ranked.apply(is_finalized, axis=1)]
    if len(fin) < 2:
        return []
    rows = [(row, per_image(client, row["run_id"], "best", column)) for _, row in fin.iterrows()]
    (top, a), lines = rows[0], []
    for row, b in rows[1:]:
        if a is not None and b is not None and len(a) == len(b):
            label = label_of(_searched(top), top["trial_id"]), label_of(_searched(row), row["trial_id"])
            lines.append(verdict(*label, paired_difference(a, b)))
    return lines


def _searched(row: pd.Series) -> dict[str, Any]:
    return {c[len("search."):]: row[c] for c in row.index
            if c.startswith("search.") and c != "search.replicate" and pd.notna(row[c])}


def uncertainty_section(client: Any, ranked: pd.DataFrame, runs: pd.DataFrame, select: str
                        ) -> tuple[list[str], list[Configuration]]:
    """Markdown lines: the replicates of the finalists (validation and test), the winner against each runner-up in
    words, and what the validation split and the test set can resolve; and the validation configurations (for the
    figures' error bars)."""
    title = COLUMN_TITLES[HEADLINE]
    lines = ["## Is the winner distinguishable from the runner-up?", ""]
    replicated = set(runs.loc[is_replicate(runs), "replicate_of"])
    finalists = [t for t in ranked["trial_id"] if t in replicated]
    val = replicate_configurations(runs, finalists, select) if finalists else []
    test: list[Configuration] = []
    if not finalists:
        lines.append("No replicates: every number above is one run with one seed, so a ranking can be seed noise. "
                     "`python -m search.replicate name=<this search>` trains the finalists again with new seeds; "
                     "`analysis.finalize` then evaluates them and this section gives each configuration's mean and "
                     "95 % interval and the verdicts.")
        single = single_run_lines(client, ranked)
        if single:
            lines += ["", (f"The search's own runs on the same test images ({title}, best checkpoint; one seed each, "
                           "so this compares two trained models, not two configurations):"), "",
                      *(f"- {v}" for v in single)]
    else:
        if ranked.iloc[0]["trial_id"] not in replicated:
            lines.append(f"The search's winner `{ranked.iloc[0]['trial_id']}` has no replicates; the comparisons "
                         "below are among the replicated finalists, the best-ranked first.")
            lines.append("")
        lines += [("Each configuration's replicates (train.seed and the epoch order seed shifted by 1, 2, ...; the "
                   "validation split, the test set and the teacher unchanged); the search's own run is shown with its "
                   "Wilson interval but left out of the statistics (it was selected for scoring high)."), "",
                  f"**Validation, `{select}` (%)**", "", _replicate_table(val), ""]
        verdicts = verdict_lines(val)
        lines += [f"- {v}" for v in verdicts] + ([""] if verdicts else [])
        test = replicate_configurations(runs, finalists, result_key(HEADLINE, "best"))
        summaries = [text for text in (verdict_summary(test, f"the test set ({title}, across seeds)"),
                                       verdict_summary(val, f"validation (`{select}`, across seeds)")) if text]
        if summaries:
            lines[2:2] = [f"**In short**: {'; '.join(summaries)}.", ""]
        if any(c.values for c in test):
            lines += [f"**Test set, {title}, best checkpoint (%)**", "", _replicate_table(test), ""]
            lines += [f"- {v}" for v in verdict_lines(test)]
            ranked_test = sorted(test, key=lambda c: c.rank)
            per_seed = [ln for other in ranked_test[1:] for ln in mcnemar_lines(client, runs, ranked_test[0], other)]
            if per_seed:
                lines += ["", f"Per seed, the two models on the same test images ({title}, McNemar's exact test):", "",
                          *(f"- {v}" for v in per_seed)]
            lines.append("")
        else:
            lines += ["", ("_The replicates are not finalized: `python -m analysis.finalize name=<this search>` "
                           "evaluates them (and the test-set verdict appears here)._"), ""]
    lines += ["**Resolution** (the smallest difference the data can show with 80 % power at the 5 % level):", ""]
    n_val = validation_images(ranked.iloc[0]) if len(ranked) else None
    seeds = max((len(c.values) for c in val), default=1)
    if n_val:
        lines.append(f"- {resolution_sentence(n_val, 'the validation split', max(seeds, 2), pooled_seed_sd(val))}.")
    n_test = next((n for _, row in runs.iterrows() if (n := test_images(row, HEADLINE))), None)
    if n_test:
        lines.append(f"- {resolution_sentence(n_test, 'the test set', max(seeds, 2), pooled_seed_sd(test))}.")
    lines.append("- Rule: MDD = 2.80 x sqrt(2 (p(1-p)/n + sd_seed^2) / seeds) (z 1.96 + 0.84 for 95 % confidence "
                 "and 80 % power); val_size 1000 at p = 0.55 gives 6.2 points for single runs.")
    return lines, val


def figure_intervals(ranked: pd.DataFrame, configs: Sequence[Configuration]) -> dict[str, dict[Any, Any]]:
    """The replicates' intervals keyed as the k, teacher and RSL-source figures place them (best rank first)."""
    by_id = ranked.set_index("trial_id", drop=False)
    out: dict[str, dict[Any, Any]] = {"k": {}, "teacher": {}, "rsl_source": {}}
    for c in sorted(configs, key=lambda c: c.rank):
        if c.summary is None or c.trial_id not in by_id.index:
            continue
        row = by_id.loc[c.trial_id]
        for figure, column in (("k", "k"), ("teacher", "teacher"), ("rsl_source", "rsl_source")):
            key = row.get(column)
            if key is not None and not (isinstance(key, float) and math.isnan(key)):
                s = c.summary  # clipped to what an accuracy can be (with few seeds mean +- t*se can leave [0, 1])
                out[figure].setdefault(key, (s.mean, max(0.0, min(s.low, s.mean)), min(1.0, max(s.high, s.mean)))
                                       if not math.isnan(s.low) else (s.mean, s.mean, s.mean))
    return out


def _inside_lines(runs: pd.DataFrame, row: pd.Series, ck: str, published: Mapping[str, float]) -> str | None:
    """Whether each published number lies inside our 95 % interval: the replicates' t interval when there are >= 2,
    else the run's Wilson interval on its test images (test sampling only, no seed noise)."""
    parts = []
    for c in (c for c in EVAL_COLUMNS if c in published):
        (config,) = replicate_configurations(runs, [row["trial_id"]], result_key(c, ck))
        s = config.summary
        if s is not None and s.n >= 2:
            interval, how = s, f"mean of {s.n} replicates, t"
        elif config.selection_interval is not None:
            interval, how = config.selection_interval, f"this run, Wilson on {config.selection_n} images"
        else:
            continue
        low, high = 100 * interval.low, 100 * interval.high
        where = "inside" if low <= published[c] <= high else "outside"
        parts.append(f"{COLUMN_TITLES[c]} {published[c]:.2f} {where} [{low:.2f}, {high:.2f}] ({how})")
    return "; ".join(parts) or None


# --- the report ----------------------------------------------------------------------------------
def _space_yaml(parent: Any, tracking_uri: str) -> str | None:
    """The parent run's config/space.yaml artifact as text, None when it cannot be read."""
    if parent is None:
        return None
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as folder:
            path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="config/space.yaml",
                                                       dst_path=folder, tracking_uri=tracking_uri)
            return Path(path).read_text()
    except Exception as err:  # a missing or unreachable artifact only costs the declared distributions
        log.info("no config/space.yaml on the parent run (%s); importances use observed ranges", type(err).__name__)
        return None


def build_figures(runs: pd.DataFrame, history: pd.DataFrame, folder: Path, select: str, mode: str, top_k: int,
                  distributions: Mapping[str, Any] | None = None, intervals: Mapping[str, Any] | None = None,
                  interval_label: str = plots.INTERVAL_LABEL
                  ) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Draw every figure the data support into folder (the k, teacher and RSL-source figures with the replicates'
    `intervals` as error bars, keyed per figure); returns (written, skipped with reasons, notes on substitutes)."""
    bars = {key: dict((intervals or {}).get(key) or {}) or None for key in ("k", "teacher", "rsl_source")}
    makers: dict[str, Callable[[], Any]] = {
        "k": lambda: plots.plot_k(runs, select, intervals=bars["k"], interval_label=interval_label),
        "teacher": lambda: plots.plot_teacher(runs, select, intervals=bars["teacher"], interval_label=interval_label),
        "rsl_source": lambda: plots.plot_rsl_source(runs, select, intervals=bars["rsl_source"],
                                                    interval_label=interval_label),
        "pareto": lambda: plots.plot_pareto(runs, select, history),
        "learning_curves": lambda: plots.plot_learning_curves(runs, history, select, top_k, mode),
        "importances": lambda: plots.plot_importances(runs, select, mode, distributions),
    }
    written, skipped, notes = {}, {}, {}
    for key, make in makers.items():
        path = folder / FIGURES[key]
        try:
            fig = make()
        except plots.FigureSkipped as why:
            skipped[key] = str(why)
            path.unlink(missing_ok=True)  # a stale figure from an earlier report would contradict the list
            continue
        fig.savefig(path)
        written[key] = path
        if fig.get_suptitle():
            notes[key] = " ".join(fig.get_suptitle().split())
    return written, skipped, notes


def build_report(name: str, tracking_uri: str, out: str | Path | None = None, *, compare: str = "none",
                 select: str = DEFAULT_SELECT, top_k: int = 3, log_artifacts: bool = True) -> ReportResult:
    """Write <out>/report.md and the figures for search `name`; log the folder under report/ of the parent run."""
    every = load_runs(name, tracking_uri)
    runs = every[~is_replicate(every)].reset_index(drop=True)  # the search's trials; replicates have a section
    parent = find_parent_run(name, tracking_uri)
    ptags = parent.data.tags if parent is not None else {}
    mode = selection_mode(select, ptags)
    folder = Path(out) if out else Path.cwd() / "reports" / name
    folder = folder.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    result = ReportResult(folder=folder, markdown=folder / "report.md")
    lines = [f"# Search report: {name}", ""]
    if runs.empty:
        lines.append("This experiment has no trial runs yet.")
        result.markdown.write_text("\n".join(lines) + "\n")
        return result

    history = load_history(name, tracking_uri, metrics=("val_pgd_acc", "val_clean_acc"))
    if runs["epochs_run"].isna().any() and not history.empty:
        # Runs without the rslad.epochs_run tag: the last logged epoch is the count.
        last = history.groupby("run_id")["step"].max()
        runs["epochs_run"] = runs["epochs_run"].fillna(runs["run_id"].map(last)).astype("Int64")
    ordered, n_ranked = _ordered(runs, select, mode)
    clean = plots.clean_at_best(ordered, history)
    settings = varying_settings(ordered)
    savings = asha_savings(ordered)
    winner = ptags.get("rslad.final_winner")
    result.asha, result.winner = savings, winner

    counts = ordered["status"].value_counts().to_dict()
    lines += [f"Space `{ptags.get('rslad.space', '?')}`, profile `{ptags.get('rslad.profile', '?')}`, "
              f"{len(ordered)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); tracking `{tracking_uri}`.",
              "",
              f"**Selection metric**: `{select}` ({mode}) — "
              + ("the best validation robust accuracy over the epochs a trial ran (under train.val_attack, below); "
                 if select == "best_val_pgd_acc" else "") +
              "trials are ranked by it, and `analysis.finalize` evaluates the top-k on the test set.",
              "", *selection_rules(ordered), ""]
    notes = numerics_notes(ordered)
    if notes:
        lines += ["## Choices that affect the numbers", "", *notes, ""]
    lines += ["## Summary", ""]
    lines += summary(ordered, n_ranked, settings, select, mode, winner, savings, clean)
    table, finalized = test_table(ordered, n_ranked, settings, select)
    lines += ["", "## Test-set robustness of the finalized trials (%, supplement layout)", ""]
    prov = _aa_provenance(ordered)
    if prov:
        lines += [prov + ".", ""]
    widths = _wilson_widths(ordered)
    if widths:
        lines += [f"Each number's 95 % Wilson interval is at most {widths} (at 50 %; `analysis.finalize` prints each "
                  "cell's interval and logs test/<column>/<checkpoint>_ci_low/_ci_high).", ""]
    lines += [table, "", "## All trials (validation split, %)", "",
              validation_table(ordered, n_ranked, settings, select, clean), ""]
    verdicts, configs = uncertainty_section(client_for(tracking_uri), ordered.head(n_ranked), every, select)
    lines += verdicts + [""]
    if compare == "paper":
        lines += compare_section(ordered, every) + [""]

    distributions = plots.space_distributions(_space_yaml(parent, tracking_uri), ptags.get("rslad.profile"))
    seeds = max((len(c.values) for c in configs), default=0)
    label = f"replicates: mean and 95 % t interval of {plots.select_label(select)} ({seeds} seeds)"
    result.figures, result.skipped, notes = build_figures(ordered, history, folder, select, mode, top_k, distributions,
                                                          figure_intervals(ordered, configs), label)
    lines += ["## Figures", ""]
    for key, path in result.figures.items():
        lines += [f"### {FIGURE_TITLES[key]}", ""] + ([f"_{notes[key]}._", ""] if key in notes else [])
        lines += [f"![{FIGURE_TITLES[key]}]({path.name})", ""]
    if result.skipped:
        lines += ["Figures not drawn (the data do not support them):", ""]
        lines += [f"- {FIGURE_TITLES[k]}: {why}." for k, why in result.skipped.items()]
        lines.append("")
    result.markdown.write_text("\n".join(lines))
    log.info("report written to %s (%d figures, %d skipped)", result.markdown, len(result.figures), len(result.skipped))

    if log_artifacts and parent is not None:
        client_for(tracking_uri).log_artifacts(parent.info.run_id, str(folder), artifact_path="report")
        result.logged_to = f"runs:/{parent.info.run_id}/report"
        log.info("report logged to %s", result.logged_to)
    elif log_artifacts:
        log.warning("no parent run (tag rslad.role=search): report not logged to MLflow")
    return result


def main(args: Mapping[str, Any]) -> int:
    """The command: build the report and say where it is."""
    result = build_report(args["name"], args["tracking.uri"], args["out"], compare=args["compare"],
                          select=args["select"], top_k=args["top_k"])
    print(f"report: {result.markdown}" + (f" (also {result.logged_to})" if result.logged_to else ""))
    return 0


ALLOWED_KEYS = ("name", "out", "compare", "select", "top_k", "tracking.uri")


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m analysis.report key=value ...`."""
    return run_command(main, argv, ALLOWED_KEYS)


if __name__ == "__main__":
    raise SystemExit(cli())
