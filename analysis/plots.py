"""The supplement's figures from a load_runs() frame; each function returns a matplotlib Figure or raises FigureSkipped.

Figures are built on matplotlib.figure.Figure directly (no pyplot): no global backend is
chosen, nothing is left open, and a notebook displays the returned Figure as it is.
Robustness on the y axes: the selection metric (validation) for every trial, and the
test-set column of the supplement's matching figure/table for finalized trials, both in %.
plot_k, plot_teacher and plot_rsl_source take optional `intervals` (one per configuration, e.g. the
replicates' analysis.stats.replicate_summary) and draw them as points with error bars; without them
the figures are as before.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.runs import DEFAULT_SELECT, rank_trials, result_key
from trainables.config import RSL_SOURCES
from trainables.teachers import default_checkpoint_path, get_teacher

INTERVAL_LABEL = "replicates: mean and 95 % interval"
STATUS_MARKERS = {"finished": "o", "stopped_early": "v", "running": "s", "interrupted": "s", "failed": "X"}
SELECT_LABELS = {"best_val_pgd_acc": "best validation PGD acc.", "val_pgd_acc": "validation PGD acc. (last epoch)",
                 "val_clean_acc": "validation clean acc. (last epoch)"}


class FigureSkipped(Exception):
    """The experiment's data do not support this figure; the message says why (listed in the report)."""


def select_label(select: str) -> str:
    """Axis wording for the selection metric."""
    return SELECT_LABELS.get(select, select)


def _pct(values: Any) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=float)


def _has_test(runs: pd.DataFrame, column: str, checkpoint: str = "best") -> pd.Series:
    key = result_key(column, checkpoint)
    return runs[key].notna() if key in runs.columns else pd.Series(False, index=runs.index)


def _usable(runs: pd.DataFrame, select: str) -> pd.DataFrame:
    if select not in runs.columns:
        raise FigureSkipped(f"no trial has the metric {select!r}")
    use = runs[runs[select].notna() & (runs["status"] != "failed")]
    if use.empty:
        raise FigureSkipped(f"no non-failed trial has the metric {select!r}")
    return use


def _status_legend(ax: Any, statuses: Sequence[str]) -> list[Line2D]:
    return [Line2D([], [], ls="", marker=STATUS_MARKERS.get(s, "o"), color="0.4", label=s.replace("_", " "))
            for s in dict.fromkeys(statuses)]


def _legend(fig: Figure, handles: Sequence[Any]) -> None:
    """The legend below the axes, where it never hides data."""
    handles = list(handles)
    wide = any(len(h.get_label()) > 40 for h in handles)
    fig.legend(handles=handles, loc="outside lower center", ncols=1 if wide else 2, fontsize=8, frameon=False)


def _log_axis(axis: Any) -> None:
    """A log axis labelled 0.1, 0.2, 0.5, 1, 2, 5, ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _new_figure(width: float = 6.4, height: float = 4.4) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.add_subplot()


def _scatter_by_status(ax: Any, x: Sequence[float], y: Sequence[float], statuses: Sequence[str], **kw: Any) -> None:
    for status in dict.fromkeys(statuses):
        idx = [i for i, s in enumerate(statuses) if s == status]
        ax.scatter(np.asarray(x)[idx], np.asarray(y)[idx], marker=STATUS_MARKERS.get(status, "o"), **kw)


def _interval_parts(value: Any) -> tuple[float, float, float]:
    """(centre, low, high) fractions of one interval: an analysis.stats result (estimate, low, high) or a 3-tuple."""
    if hasattr(value, "low") and hasattr(value, "high"):
        return float(value.estimate), float(value.low), float(value.high)
    centre, low, high = value
    return float(centre), float(low), float(high)


def _errorbars(ax: Any, x: Sequence[float], values: Sequence[Any], label: str) -> Any:
    """Each interval at its x as a black diamond with error bars (in %); a nan interval (n = 1) draws the point."""
    centre, low, high = (_pct(col) for col in zip(*map(_interval_parts, values)))
    below, above = np.nan_to_num(centre - low, nan=0.0), np.nan_to_num(high - centre, nan=0.0)
    if (below < -1e-9).any() or (above < -1e-9).any():
        raise ValueError("every interval must contain its centre (low <= centre <= high)")
    yerr = np.vstack([np.clip(below, 0.0, None), np.clip(above, 0.0, None)])
    return ax.errorbar(np.asarray(x, dtype=float), centre, yerr=yerr, fmt="D", ms=5, color="black", elinewidth=1.3,
                       capsize=4, zorder=5, label=label)


# --- Fig. 1: robustness vs k --------------------------------------------------------------------
def plot_k(runs: pd.DataFrame, select: str = DEFAULT_SELECT, intervals: Mapping[float, Any] | None = None,
           interval_label: str = INTERVAL_LABEL) -> Figure:
    """Robust accuracy against k = alpha/(1-alpha) on a log axis (supplement Fig. 1), RSLAD trials only.

    intervals: {k: interval} (an analysis.stats result or a (centre, low, high) tuple, fractions) drawn as error
    bars at k; keys with k <= 0 or not finite are left out.
    """
    use = _usable(runs, select)
    if "alpha" not in use.columns:
        raise FigureSkipped("alpha is not a logged param")
    if "method" in use.columns:
        use = use[use["method"] == "rslad"]
    use = use[np.isfinite(use["k"].astype(float)) & (use["k"].astype(float) > 0)]
    if use["alpha"].nunique() < 2:
        raise FigureSkipped("alpha did not vary across RSLAD trials (needs >= 2 values with 0 < alpha < 1)")
    fig, ax = _new_figure()
    statuses = list(use["status"])
    _scatter_by_status(ax, use["k"], _pct(use[select]), statuses, color="tab:blue", s=40)
    handles = [Line2D([], [], ls="", marker="o", color="tab:blue", label=f"{select_label(select)} (all trials)")]
    fin = use[_has_test(use, "pgd_trades")]
    if len(fin):
        ax.scatter(fin["k"], _pct(fin[result_key("pgd_trades", "best")]), marker="*", s=140, color="tab:red", zorder=3)
        handles.append(Line2D([], [], ls="", marker="*", ms=11, color="tab:red",
                              label="test PGD_TRADES, best checkpoint (finalized)"))
    ks = sorted(k for k in (intervals or {}) if math.isfinite(float(k)) and float(k) > 0)
    if ks:
        handles.append(_errorbars(ax, ks, [intervals[k] for k in ks], interval_label))
    ax.axvline(5.0, color="0.5", ls=":", lw=1)
    handles.append(Line2D([], [], color="0.5", ls=":", label="paper's choice k = 5 (alpha = 5/6)"))
    _log_axis(ax.xaxis)
    ax.set_xlabel("k = alpha / (1 - alpha)  (ratio of adversarial to natural term, log scale)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("Robustness vs. loss ratio k (cf. supplement Fig. 1)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig, handles + _status_legend(ax, statuses))
    return fig


# --- Table 2: student vs teacher robustness ------------------------------------------------------
def teacher_robustness(runs: pd.DataFrame) -> dict[str, tuple[float | None, str]]:
    """Each teacher's robustness (fraction) and its kind: TeacherSpec AA, else the teacher file's validation PGD."""
    out: dict[str, tuple[float | None, str]] = {}
    for name, group in runs.groupby("teacher"):
        if name == "none":
            continue
        try:
            spec = get_teacher(str(name))
        except KeyError:
            out[str(name)] = (None, "unknown teacher")
            continue
        if spec.aa_acc is not None:
            out[str(name)] = (spec.aa_acc, "AutoAttack (TeacherSpec)")
            continue
        row = group.iloc[0]
        path = row.get("teacher_checkpoint") or default_checkpoint_path(str(name), row.get("teachers_dir") or "teachers")
        out[str(name)] = (_teacher_file_pgd(Path(path)), "validation PGD (teacher checkpoint)")
    return out


def _teacher_file_pgd(path: Path) -> float | None:
    """val_pgd_acc stored in a teacher checkpoint's metrics (search.teachers writes it), None if absent."""
    import torch

    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    metrics = blob.get("metrics", {}) if isinstance(blob, dict) else {}
    value = metrics.get("val_pgd_acc", metrics.get("best_val_pgd_acc"))
    return None if value is None else float(value)


def plot_teacher(runs: pd.DataFrame, select: str = DEFAULT_SELECT,
                 teachers: Mapping[str, tuple[float | None, str]] | None = None,
                 intervals: Mapping[str, Any] | None = None, interval_label: str = INTERVAL_LABEL) -> Figure:
    """Student robustness against teacher robustness (supplement Tables 1-2, robust saturation).

    intervals: {teacher name: interval} (an analysis.stats result or a (centre, low, high) tuple, fractions)
    drawn as error bars at that teacher's robustness; teachers of unknown robustness are left out.
    """
    use = _usable(runs, select)
    if "teacher" not in use.columns:
        raise FigureSkipped("teacher is not a logged param")
    use = use[use["teacher"] != "none"]
    if use["teacher"].nunique() < 2:
        raise FigureSkipped("fewer than 2 teachers were tried")
    teachers = dict(teachers) if teachers is not None else teacher_robustness(use)
    unknown = sorted(t for t in use["teacher"].unique() if teachers.get(t, (None, ""))[0] is None)
    known = use[~use["teacher"].isin(unknown)]
    if known["teacher"].nunique() < 2:
        raise FigureSkipped(f"teacher robustness unknown for {', '.join(unknown)} (no AA in TeacherSpec, no teacher file)")
    kinds = sorted({teachers[t][1] for t in known["teacher"].unique()})
    fig, ax = _new_figure()
    x = np.array([100 * teachers[t][0] for t in known["teacher"]])
    markers = {kind: m for kind, m in zip(kinds, ("o", "s", "D"))}
    handles = []
    for kind in kinds:
        sel = np.array([teachers[t][1] == kind for t in known["teacher"]])
        ax.scatter(x[sel], _pct(known[select])[sel], marker=markers[kind], color="tab:blue", s=40)
        label = f"student {select_label(select)}" + (f" (teacher: {kind})" if len(kinds) > 1 else "")
        handles.append(Line2D([], [], ls="", marker=markers[kind], color="tab:blue", label=label))
    fin = _has_test(known, "autoattack").to_numpy()
    if fin.any():
        ax.scatter(x[fin], _pct(known[result_key("autoattack", "best")])[fin], marker="*", s=140, color="tab:red", zorder=3)
        handles.append(Line2D([], [], ls="", marker="*", ms=11, color="tab:red", label="student test AA, best checkpoint"))
    drawn = [t for t in known["teacher"].unique() if t in (intervals or {})]
    if drawn:
        handles.append(_errorbars(ax, [100 * teachers[t][0] for t in drawn], [intervals[t] for t in drawn],
                                  interval_label))
    for t in known["teacher"].unique():
        ax.annotate(t, (100 * teachers[t][0], _pct(known[known["teacher"] == t][select]).max()), fontsize=7,
                    xytext=(3, 4), textcoords="offset points")
    xlabel = "teacher robustness (%): " + " / ".join(kinds)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student robust accuracy (%)")
    title = "Student vs. teacher robustness (cf. supplement Table 2)"
    ax.set_title(title + (f"\n(not shown, robustness unknown: {', '.join(unknown)})" if unknown else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(fig, handles)
    return fig


# --- Table 3: RSL source -------------------------------------------------------------------------
def plot_rsl_source(runs: pd.DataFrame, select: str = DEFAULT_SELECT, intervals: Mapping[str, Any] | None = None,
                    interval_label: str = INTERVAL_LABEL) -> Figure:
    """Bar per RSL source (T1-T2-T3): the best trial's selection metric, every trial as a dot, finalized test AA as stars.

    intervals: {RSL source: interval} (an analysis.stats result or a (centre, low, high) tuple, fractions) drawn
    as error bars on that source's bar; sources without trials are left out.
    """
    use = _usable(runs, select)
    if "rsl_source" not in use.columns:
        raise FigureSkipped("rsl_source is not a logged param")
    if "method" in use.columns:
        use = use[use["method"] == "rslad"]
    if use["rsl_source"].nunique() < 2:
        raise FigureSkipped("fewer than 2 RSL sources were tried (RSLAD trials)")

    order = [s for s in RSL_SOURCES if s in set(use["rsl_source"])] + sorted(set(use["rsl_source"]) - set(RSL_SOURCES))
    fig, ax = _new_figure()
    pos = np.arange(len(order))
    best = [100 * use.loc[use["rsl_source"] == s, select].max() for s in order]
    ax.bar(pos, best, width=0.6, color="tab:blue", alpha=0.55, label=f"best trial: {select_label(select)}")
    for i, s in enumerate(order):
        vals = _pct(use.loc[use["rsl_source"] == s, select])
        ax.scatter(np.full(len(vals), pos[i]), vals, color="tab:blue", s=18, zorder=3)
    fin = use[_has_test(use, "autoattack")]
    if len(fin):
        ax.scatter([order.index(s) for s in fin["rsl_source"]], _pct(fin[result_key("autoattack", "best")]),
                   marker="*", s=140, color="tab:red", zorder=4, label="test AA, best checkpoint (finalized)")
    drawn = [s for s in order if s in (intervals or {})]
    if drawn:
        _errorbars(ax, [order.index(s) for s in drawn], [intervals[s] for s in drawn], interval_label)
    ax.scatter([], [], color="tab:blue", s=18, label="each trial")
    counts = [int((use["rsl_source"] == s).sum()) for s in order]
    ax.set_xticks(pos, [f"{s}\n(n={c})" for s, c in zip(order, counts)])
    ax.set_xlabel("RSL source: teacher input for T1-T2-T3 (nat = clean x, adv = x')")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("RSL source: clean vs. adversarial teacher inputs (cf. Table 3)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, ax.get_legend_handles_labels()[0])
    return fig


# --- clean vs robust, Pareto front ---------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both coordinates (maximising both), by increasing x."""
    idx = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in idx:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(runs: pd.DataFrame, select: str = DEFAULT_SELECT, history: pd.DataFrame | None = None) -> Figure:
    """Clean vs robust accuracy of every trial with the Pareto front (validation), plus finalized test points."""
    use = _usable(runs, select)
    if len(use) < 2:
        raise FigureSkipped("fewer than 2 trials")
    clean = clean_at_best(use, history)
    ok = clean.notna()
    if ok.sum() < 2:
        raise FigureSkipped("validation clean accuracy missing")
    use, clean = use[ok], clean[ok]
    fig, ax = _new_figure()
    pts = list(zip(_pct(clean), _pct(use[select])))
    statuses = list(use["status"])
    _scatter_by_status(ax, [p[0] for p in pts], [p[1] for p in pts], statuses, color="tab:blue", s=36, alpha=0.8)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:blue", lw=1.5)
    handles = [Line2D([], [], color="tab:blue", marker="o", label=f"validation: clean vs {select_label(select)}, "
                                                                   "Pareto front")]
    fin = use[_has_test(use, "autoattack") & _has_test(use, "clean")]
    if len(fin):
        tp = list(zip(_pct(fin[result_key("clean", "best")]), _pct(fin[result_key("autoattack", "best")])))
        ax.scatter([p[0] for p in tp], [p[1] for p in tp], marker="*", s=140, color="tab:red", zorder=3)
        tf = pareto_front(tp)
        ax.plot([tp[i][0] for i in tf], [tp[i][1] for i in tf], color="tab:red", lw=1.2, ls="--")
        handles.append(Line2D([], [], color="tab:red", ls="--", marker="*", ms=11,
                              label="test: clean vs AA, best checkpoint (finalized), Pareto front"))
    for i in front:
        ax.annotate(str(use.iloc[i]["trial_id"]), pts[i], fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("Clean vs. robust accuracy of all trials")
    ax.grid(True, alpha=0.3)
    _legend(fig, handles + _status_legend(ax, statuses))
    return fig


def clean_at_best(runs: pd.DataFrame, history: pd.DataFrame | None) -> pd.Series:
    """Validation clean accuracy at each trial's best epoch (the epoch its best_val_pgd_acc comes from), else the last."""
    out = runs["val_clean_acc"].astype(float).copy() if "val_clean_acc" in runs.columns else pd.Series(np.nan, runs.index)
    if history is None or history.empty or "best_epoch" not in runs.columns:
        return out
    clean = history[history["metric"] == "val_clean_acc"].set_index(["run_id", "step"])["value"]
    for i, row in runs.iterrows():
        if pd.notna(row["best_epoch"]) and (row["run_id"], int(row["best_epoch"])) in clean.index:
            out[i] = clean[(row["run_id"], int(row["best_epoch"]))]
    return out


# --- learning curves -----------------------------------------------------------------------------
def plot_learning_curves(runs: pd.DataFrame, history: pd.DataFrame, select: str = DEFAULT_SELECT,
                         top_n: int = 5, mode: str = "max") -> Figure:
    """val_pgd_acc per epoch: the top_n trials in colour, the rest in grey, x where ASHA stopped a trial."""
    if history is None or history.empty or not (history["metric"] == "val_pgd_acc").any():
        raise FigureSkipped("no val_pgd_acc history was logged")

    curves = history[history["metric"] == "val_pgd_acc"]
    # Failed trials are not ranked (as in finalize): they are drawn in grey with the rest.
    top = list(rank_trials(runs, select, mode)["run_id"].head(top_n))
    fig, ax = _new_figure(7.0, 4.6)
    colours = dict(zip(top, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                             "tab:pink", "tab:olive", "tab:cyan", "tab:gray")))
    stopped_any = False
    # Others first (underneath), then the top trials in rank order (so the legend reads #1, #2, ...).
    order = [r for r in runs["run_id"] if r not in colours] + top
    for _, row in runs.set_index("run_id", drop=False).loc[order].iterrows():
        c = curves[curves["run_id"] == row["run_id"]].sort_values("step")
        if c.empty:
            continue
        is_top = row["run_id"] in colours
        colour = colours.get(row["run_id"], "0.75")
        label = f"#{top.index(row['run_id']) + 1} {row['trial_id']} ({row['status'].replace('_', ' ')})" if is_top else None
        ax.plot(c["step"], _pct(c["value"]), color=colour, lw=1.8 if is_top else 0.8, marker="." if is_top else None,
                label=label, zorder=3 if is_top else 1)
        if row["status"] == "stopped_early":
            stopped_any = True
            ax.scatter([c["step"].iloc[-1]], [100 * c["value"].iloc[-1]], marker="x", s=60, color=colour,
                       linewidths=2, zorder=4)
    handles, _ = ax.get_legend_handles_labels()
    if len(runs) > len(top):
        handles.append(Line2D([], [], color="0.75", lw=0.8, label="other trials"))
    if stopped_any:
        handles.append(Line2D([], [], ls="", marker="x", color="k", ms=7, mew=2, label="stopped early by ASHA"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation PGD accuracy (%)")
    ax.set_title(f"Learning curves of the top {len(top)} trials by {select_label(select)}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    _legend(fig, handles)
    return fig


# --- parameter importances -----------------------------------------------------------------------
MIN_IMPORTANCE_TRIALS = 4


def search_params(runs: pd.DataFrame) -> list[str]:
    """The searched (Optuna) params, logged as search.<name>."""
    return [c for c in runs.columns if c.startswith("search.")]


def _distribution(spec: Mapping[str, Any]) -> Any:
    """An Optuna distribution from one space-YAML param (spaces/compiler.py's format)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    kind = spec.get("type")
    if kind == "choice":
        return CategoricalDistribution(list(spec["values"]))
    if kind == "uniform":
        return FloatDistribution(float(spec["low"]), float(spec["high"]))
    if kind == "loguniform":
        return FloatDistribution(float(spec["low"]), float(spec["high"]), log=True)
    if kind == "quniform":
        return FloatDistribution(float(spec["low"]), float(spec["high"]), step=float(spec["q"]))
    if kind == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)))
    if kind == "logint":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=True)
    raise ValueError(f"unknown param type {kind!r}")


def space_distributions(space_yaml: str | None, profile: str | None) -> dict[str, Any]:
    """Optuna distributions of a space file's params (profile overrides merged); {} when absent or unreadable."""
    if not space_yaml:
        return {}
    try:
        doc = yaml.safe_load(space_yaml) or {}
        params = dict(doc.get("params") or {})
        override = ((doc.get("profiles") or {}).get(profile) or {}).get("params") or {}
        for name, spec in override.items():
            params[name] = None if spec is None else {**(params.get(name) or {}), **spec}
        return {f"search.{n}": _distribution(s) for n, s in params.items() if s}
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError):
        return {}


def _inferred(values: pd.Series) -> Any:
    """A distribution covering the observed values: a range for numbers, categories otherwise."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    vals = values.dropna()
    if pd.api.types.is_bool_dtype(vals) or not pd.api.types.is_numeric_dtype(vals):
        return CategoricalDistribution(sorted(set(vals), key=str))
    if pd.api.types.is_integer_dtype(vals):
        return IntDistribution(int(vals.min()), int(vals.max()))
    return FloatDistribution(float(vals.min()), float(vals.max()))


def importance_study(runs: pd.DataFrame, select: str = DEFAULT_SELECT, mode: str = "max",
                     distributions: Mapping[str, Any] | None = None) -> Any:
    """An in-memory Optuna study rebuilt from the trials' search.* params and final `select` value."""
    import optuna

    use = _usable(runs, select)
    params = [p for p in search_params(use) if use[p].nunique() >= 2]
    dists = {}
    for p in params:
        d = (distributions or {}).get(p)
        # A value outside the declared domain (space edited after the search) falls back to the observed range.
        dists[p] = d if d is not None and _fits(d, use[p].dropna()) else _inferred(use[p])
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in use.iterrows():
        present = {p: _plain(row[p]) for p in params if pd.notna(row[p])}
        study.add_trial(optuna.trial.create_trial(params=present, distributions={p: dists[p] for p in present},
                                                  value=float(row[select])))
    return study


def _fits(dist: Any, values: pd.Series) -> bool:
    """Whether every observed value lies in the distribution's domain."""
    from optuna.distributions import CategoricalDistribution

    vals = [_plain(v) for v in values]
    if isinstance(dist, CategoricalDistribution):
        return all(v in dist.choices for v in vals)
    try:
        return all(dist.low <= float(v) <= dist.high for v in vals)
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (Optuna's distributions compare by type)."""
    return value.item() if hasattr(value, "item") else value


def plot_importances(runs: pd.DataFrame, select: str = DEFAULT_SELECT, mode: str = "max",
                     distributions: Mapping[str, Any] | None = None) -> Figure:
    """Optuna parameter importances (fANOVA) of the searched params; a metric-vs-value scatter when too few."""
    import optuna

    use = _usable(runs, select)
    params = [p for p in search_params(use) if use[p].nunique() >= 2]
    if not params:
        raise FigureSkipped("no searched (search.*) param varied")
    complete = [p for p in params if use[p].notna().all()]
    if len(complete) >= 2 and len(use) >= MIN_IMPORTANCE_TRIALS:
        study = importance_study(use, select, mode, distributions)
        importances = optuna.importance.get_param_importances(study, params=complete, normalize=True)
        fig, ax = _new_figure(6.4, 1.6 + 0.5 * len(importances))
        names = list(importances)[::-1]
        ax.barh([n[len("search."):] for n in names], [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA: share of explained variance, sums to 1)")
        ax.set_ylabel("searched parameter")
        ax.set_title(f"Importances for {select_label(select)}\n({len(use)} trials, Optuna study rebuilt from MLflow)",
                     fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        return fig
    why = (f"only {len(complete)} searched param(s) varied in every trial" if len(complete) < 2
           else f"only {len(use)} trials (importances need >= {MIN_IMPORTANCE_TRIALS})")
    fig = Figure(figsize=(max(6.4, 4.2 * len(params)), 4.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params):
        sub = use[use[p].notna()]
        numeric = pd.api.types.is_numeric_dtype(sub[p]) and not pd.api.types.is_bool_dtype(sub[p])
        if numeric:
            x = sub[p].astype(float)
        else:
            cats = sorted(set(sub[p]), key=str)
            x = sub[p].map({c: i for i, c in enumerate(cats)})
            ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=20, fontsize=8)
        _scatter_by_status(ax, x, _pct(sub[select]), list(sub["status"]), color="tab:blue", s=36)
        ax.set_xlabel(f"{p[len('search.'):]} (searched value)")
        ax.set_ylabel(f"{select_label(select)} (%)")
        if numeric and (x > 0).all() and x.max() / x.min() > 20:
            _log_axis(ax.xaxis)
        ax.grid(True, alpha=0.3)
    axes[0].legend(handles=_status_legend(axes[0], list(use["status"])), fontsize=8)
    fig.suptitle(f"Metric vs. searched value\n(no importances: {why})", fontsize=10)
    return fig
