"""Analysis of finished searches: read MLflow back (load_runs, load_history), the supplement's figures (plot_*);
analysis.finalize.finalize (final AutoAttack of the winners) and analysis.report.build_report (tables + figures).

Reads MLflow and the trainables library; never Ray or Hydra. Usable from a notebook:

    from analysis import load_runs, plot_k
    runs = load_runs("alpha-smoke-20261125-130201", "sqlite:////abs/mlruns.db")
    plot_k(runs)

The names below are imported on first use: the search's driver imports analysis.stats and analysis.uncertainty
(pure arithmetic) without paying for pandas and matplotlib (seconds, and matplotlib writes a cache into HOME).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FigureSkipped": "analysis.plots",
    "load_history": "analysis.runs",
    "load_runs": "analysis.runs",
    "plot_importances": "analysis.plots",
    "plot_k": "analysis.plots",
    "plot_learning_curves": "analysis.plots",
    "plot_pareto": "analysis.plots",
    "plot_rsl_source": "analysis.plots",
    "plot_teacher": "analysis.plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
