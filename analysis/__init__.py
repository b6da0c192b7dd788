"""Analysis of finished searches: read MLflow back (load_runs, load_history), the supplement's figures (plot_*);
analysis.finalize.finalize (final AutoAttack of the winners) and analysis.report.build_report (tables + figures).

Reads MLflow and the trainables library; never Ray or Hydra. Usable from a notebook:

    from analysis import load_runs, plot_k
    runs = load_runs("alpha-smoke-20261125-130201", "sqlite:////abs/mlruns.db")
    plot_k(runs)
"""

from __future__ import annotations

from analysis.plots import (
    FigureSkipped,
    plot_importances,
    plot_k,
    plot_learning_curves,
    plot_pareto,
    plot_rsl_source,
    plot_teacher,
)
from analysis.runs import load_history, load_runs

__all__ = [
    "FigureSkipped",
    "load_history",
    "load_runs",
    "plot_importances",
    "plot_k",
    "plot_learning_curves",
    "plot_pareto",
    "plot_rsl_source",
    "plot_teacher",
]

