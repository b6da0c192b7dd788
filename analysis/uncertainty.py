"""A search's numbers with their uncertainty: how many images an accuracy rests on, its Wilson interval, the
configurations the finalists' replicates stand for, and the quotable comparison of the winner with each runner-up.

analysis.stats does the arithmetic; this module knows the project: a validation accuracy rests on `val_size`
images (the test set when val_size is 0), a replicate is a run of a finalist's configuration with another seed,
and the search's own run of a finalist is left out of its configuration's statistics (it was chosen because it
scored high: counting it would inflate the mean, the winner's curse). Used by the search's driver (final table,
`search.replicate`) and by `analysis.finalize` and `analysis.report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from analysis.stats import (
    BinomialInterval,
    Difference,
    ReplicateSummary,
    binomial_interval,
    minimum_detectable_difference,
    replicate_summary,
    seed_difference,
    verdict,
)

TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 359}
"""Test images per dataset (digits: the fixed 20 % of scikit-learn's 1,797, trainables.data); with val_size=0 the
validation accuracies are measured on them."""
PLANNING_ACCURACY = 0.55
"""The accuracy the resolution figures assume (the paper's robust accuracies are near 55 %; p(1-p) changes little
between 0.4 and 0.7)."""
PLANNING_SEEDS = 3
"""The seeds per finalist a dry run quotes the resolution for (replicate.seeds' default)."""


def validation_images(train: Mapping[str, Any]) -> int | None:
    """Images behind a trial's val_* accuracies: train.val_size, or the test set's size when it is 0 (None: unknown)."""
    size = train.get("val_size")
    if size is None or (isinstance(size, float) and math.isnan(size)):
        return None
    return int(size) if int(size) > 0 else TEST_IMAGES.get(str(train.get("dataset")))


def accuracy_interval(accuracy: float, n: int, level: float = 0.95) -> BinomialInterval:
    """The Wilson interval of an accuracy measured on n images (correct = accuracy * n, rounded)."""
    return binomial_interval(round(float(accuracy) * n), n, level)


def interval_text(summary: BinomialInterval | ReplicateSummary | Difference | None, digits: int = 1,
                  scale: float = 100.0, accuracy: bool = False) -> str:
    """'[60.4, 71.2]' (in %, by default) for anything with low/high; '-' when there is no interval. accuracy=True
    clips a t interval to what an accuracy can be ([0, 1]: with few seeds mean +- t*se can leave it)."""
    if summary is None or math.isnan(summary.low) or math.isnan(summary.high):
        return "-"
    low, high = (max(0.0, summary.low), min(1.0, summary.high)) if accuracy else (summary.low, summary.high)
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def resolution(n_images: int, seeds: int = 1, seed_sd: float = 0.0, accuracy: float = PLANNING_ACCURACY) -> float:
    """The smallest difference (fraction) two configurations can show: 95 % confidence, 80 % power."""
    return minimum_detectable_difference(n_images, accuracy=accuracy, seeds=seeds, seed_sd=seed_sd)


def resolution_sentence(n_images: int, what: str, seeds: int = PLANNING_SEEDS, seed_sd: float | None = None) -> str:
    """The resolution of `n_images` in words: single runs, and `seeds` seeds per configuration (a measured seed sd,
    or none: then the seed figure is a lower bound, as seeds add variance of their own)."""
    single = 100 * resolution(n_images)
    text = (f"{what} of {n_images} images resolves differences of about {single:.1f} points or more between two "
            f"single runs (95 % confidence, 80 % power, accuracy near {100 * PLANNING_ACCURACY:.0f} %)")
    if seeds > 1:
        many = 100 * resolution(n_images, seeds, seed_sd or 0.0)
        sd = (f"with the measured seed-to-seed sd of {100 * seed_sd:.2f} points" if seed_sd is not None
              else "at best, as seeds add variance of their own")
        text += (f"; {seeds} seeds per configuration: about {many:.1f} points ({sd}; pairing the seeds, as the "
                 "verdicts do, resolves less when a seed moves every configuration alike)")
    return text


# --- configurations and their replicates --------------------------------------------------------
@dataclass
class Configuration:
    """A finalist's configuration: the search's trial that chose it, and its replicates' values by seed."""

    trial_id: str
    label: str
    """How people name it: its searched values and the trial, e.g. 'alpha_ratio=5 (06584370)'."""
    rank: int
    selection: float | None = None
    """The search's own run's value (left out of the replicates' statistics)."""
    selection_n: int | None = None
    """Images behind `selection` (its Wilson interval), when known."""
    values: dict[int, float] = field(default_factory=dict)
    """Replicates: train.seed -> value."""

    @property
    def summary(self) -> ReplicateSummary | None:
        """Mean, sd, n and the 95 % t interval of the replicates (None without any)."""
        return replicate_summary(list(self.values.values())) if self.values else None

    @property
    def selection_interval(self) -> BinomialInterval | None:
        """The Wilson interval of the search's own run."""
        if self.selection is None or not self.selection_n or math.isnan(self.selection):
            return None
        return accuracy_interval(self.selection, self.selection_n)


def label_of(params: Mapping[str, Any], trial_id: str) -> str:
    """'alpha_ratio=5 (06584370)': a configuration's searched values and the trial that found it."""
    values = " ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    return f"{values} ({trial_id})" if values else f"trial {trial_id}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def difference(a: Configuration, b: Configuration) -> Difference | None:
    """mean(a) - mean(b) over their replicates: the paired t-test when both ran the same seeds (a seed fixes the
    initial weights of a shared architecture, the batches and the attack noise, so each seed is a block), else
    Welch's t; None when either has no replicate."""
    if not a.values or not b.values:
        return None
    seeds = sorted(a.values)
    if seeds == sorted(b.values) and len(seeds) >= 2:
        return seed_difference([a.values[s] for s in seeds], [b.values[s] for s in seeds], paired=True)
    return seed_difference(list(a.values.values()), list(b.values.values()))


def verdict_lines(configurations: Sequence[Configuration]) -> list[str]:
    """The winner (rank 1) against each runner-up, one quotable sentence each (analysis.stats.verdict)."""
    ranked = sorted(configurations, key=lambda c: c.rank)
    if len(ranked) < 2:
        return []
    winner, lines = ranked[0], []
    for other in ranked[1:]:
        diff = difference(winner, other)
        if diff is None:
            missing = winner if not winner.values else other
            lines.append(f"{winner.label} vs {other.label}: cannot be judged: {missing.label} has no replicates "
                         f"(python -m search.replicate)")
        else:
            lines.append(verdict(winner.label, other.label, diff))
    return lines


def verdict_summary(configurations: Sequence[Configuration], where: str) -> str | None:
    """One sentence: from how many runner-ups the winner is distinguishable on `where`, and which way."""
    ranked = sorted(configurations, key=lambda c: c.rank)
    if len(ranked) < 2 or not ranked[0].values:
        return None
    diffs = [(other, difference(ranked[0], other)) for other in ranked[1:]]
    judged = [(o, d) for o, d in diffs if d is not None and d.distinguishable is not None]
    better = [o.label for o, d in judged if d.distinguishable and d.low > 0]
    worse = [o.label for o, d in judged if d.distinguishable and d.high < 0]
    text = (f"on {where}, the search's winner {ranked[0].label} is distinguishable from {len(better) + len(worse)} of "
            f"its {len(diffs)} runner-up(s)")
    if better:
        text += f"; better than {', '.join(better)}"
    if worse:
        text += f"; WORSE than {', '.join(worse)}"
    if len(judged) < len(diffs):
        text += f"; {len(diffs) - len(judged)} cannot be judged or are borderline"
    return text


def pooled_seed_sd(configurations: Sequence[Configuration]) -> float | None:
    """The seed-to-seed sd pooled over configurations with >= 2 replicates (sqrt of the df-weighted mean variance)."""
    parts = [(s.n - 1, s.sd ** 2) for s in (c.summary for c in configurations) if s is not None and s.n >= 2]
    df = sum(d for d, _ in parts)
    return math.sqrt(sum(d * v for d, v in parts) / df) if df else None


REPLICATE_HEADERS = ("rank", "configuration", "search run [Wilson]", "n", "mean", "sd", "t interval", "per seed")
"""The search's own run with its 95 % Wilson interval, then its replicates' n, mean, sd and 95 % t interval."""


def replicate_rows(configurations: Sequence[Configuration], digits: int = 1) -> list[list[str]]:
    """One row per configuration (REPLICATE_HEADERS), in %: the search's run with its Wilson interval, then the
    replicates' n, mean, sd, t interval and each seed's value."""
    rows = []
    for c in sorted(configurations, key=lambda c: c.rank):
        s = c.summary
        search = "-" if c.selection is None else f"{100 * c.selection:.{digits}f}"
        if c.selection_interval is not None:
            search += f" {interval_text(c.selection_interval, digits)}"
        per_seed = " ".join(f"s{seed}:{100 * v:.{digits}f}" for seed, v in sorted(c.values.items()))
        rows.append([str(c.rank), c.label, search, str(s.n) if s else "0",
                     f"{100 * s.mean:.{digits}f}" if s else "-",
                     f"{100 * s.sd:.{digits + 1}f}" if s and not math.isnan(s.sd) else "-",
                     interval_text(s, digits, accuracy=True), per_seed or "-"])
    return rows


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A fixed-width table (a header, a rule, the rows); columns in `right` are right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    head = line(headers)
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])
