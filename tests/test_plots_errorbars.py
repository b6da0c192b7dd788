"""Error bars on the k, teacher and RSL-source figures: drawn where intervals are given, absent otherwise."""

from __future__ import annotations

import io

import matplotlib
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from analysis import plots, stats

matplotlib.use("Agg")


def _runs(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"run_id": [f"r{i}" for i in range(n)], "trial_id": [f"t{i}" for i in range(n)],
            "status": ["finished"] * n, "method": ["rslad"] * n, "best_val_pgd_acc": [0.55, 0.56, 0.58, 0.57][:n]}
    return pd.DataFrame({**base, **columns})


def _container(fig) -> ErrorbarContainer:
    (container,) = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return container


def _bars(fig) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar in the figure, in data units (%)."""
    _, _, (barlines,) = _container(fig).lines
    return [(seg[0][0], seg[0][1], seg[1][1]) for seg in barlines.get_segments()]


def _renders(fig) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def _errorbar_count(fig) -> int:
    return sum(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)


ALPHA = [0.5, 5 / 6, 0.5, 5 / 6]
K_RUNS = dict(alpha=ALPHA, k=[a / (1 - a) for a in ALPHA])


def test_k_figure_draws_the_given_intervals():
    runs = _runs(**K_RUNS)
    assert _errorbar_count(plots.plot_k(runs)) == 0  # no intervals: the figure as before
    replicates = {1.0: stats.replicate_summary([0.55, 0.58]), 5.0: (0.57, 0.55, 0.60)}
    fig = plots.plot_k(runs, intervals=replicates)
    _renders(fig)
    summary = replicates[1.0]
    assert _bars(fig) == [pytest.approx((1.0, 100 * summary.low, 100 * summary.high)), pytest.approx((5.0, 55.0, 60.0))]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.INTERVAL_LABEL in labels


def test_teacher_figure_places_the_bars_at_the_teachers_robustness():
    runs = _runs(teacher=["a", "a", "b", "b"])
    teachers = {"a": (0.40, "validation PGD"), "b": (0.50, "validation PGD")}
    assert _errorbar_count(plots.plot_teacher(runs, teachers=teachers)) == 0
    acc = stats.binomial_interval(56, 100)
    fig = plots.plot_teacher(runs, teachers=teachers, intervals={"b": acc, "unknown": (0.5, 0.4, 0.6)})
    _renders(fig)
    assert _bars(fig) == [pytest.approx((50.0, 100 * acc.low, 100 * acc.high))]


def test_rsl_source_figure_puts_the_bars_on_the_sources():
    runs = _runs(rsl_source=["nat-nat-nat", "nat-nat-nat", "adv-adv-adv", "adv-adv-adv"])
    assert _errorbar_count(plots.plot_rsl_source(runs)) == 0
    fig = plots.plot_rsl_source(runs, intervals={"adv-adv-adv": (0.575, 0.56, 0.59),
                                                 "nat-nat-nat": stats.replicate_summary([0.555])})
    _renders(fig)
    ax = fig.axes[0]
    ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    bars = {ticks[int(round(x))]: (low, high) for x, low, high in _bars(fig)}
    assert bars["adv-adv-adv"] == pytest.approx((56.0, 59.0))
    assert bars["nat-nat-nat"] == pytest.approx((55.5, 55.5))  # one replicate: the point, no extent
    centres = dict(zip(ticks, _container(fig).lines[0].get_ydata()))
    assert centres == {"nat-nat-nat": pytest.approx(55.5), "adv-adv-adv": pytest.approx(57.5)}


def test_an_interval_that_misses_its_centre_is_refused():
    with pytest.raises(ValueError, match="contain its centre"):
        plots.plot_k(_runs(**K_RUNS), intervals={1.0: (0.50, 0.55, 0.60)})
