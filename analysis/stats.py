"""Uncertainty of accuracies and of differences between configurations: intervals, tests, verdicts (pure functions).

Accuracies are fractions in [0, 1]; differences are fractions too (x 100 for percentage points). No scipy: the
normal quantile (Acklam's rational approximation, one Halley step), the Student-t CDF (regularized incomplete beta
function by its continued fraction, Lentz's method) and its quantile (bisection on the CDF), and the exact
binomial tail (integer arithmetic) are written here and tested against published table values.

Which function for which comparison:
- one accuracy on n images: binomial_interval (Wilson score interval);
- one configuration over several seeds: replicate_summary (mean, sd, Student-t interval);
- two models on the same test images: paired_difference (McNemar's exact test, paired interval);
- two configurations over seeds: seed_difference (Welch's t, or the paired t-test when the seeds are paired);
- planning val_size and seeds: minimum_detectable_difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "BinomialInterval", "Difference", "ReplicateSummary", "binomial_cdf_half", "binomial_interval",
    "format_interval", "mcnemar_exact_p", "minimum_detectable_difference", "normal_cdf", "normal_quantile",
    "paired_difference", "replicate_summary", "seed_difference", "t_cdf", "t_quantile", "verdict",
]


# --- distributions -------------------------------------------------------------------------------
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)


def _check_probability(p: float, name: str = "p") -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {p!r}")


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """The x with P(Z <= x) = p (Acklam's approximation refined by one Halley step: about 1e-15 relative)."""
    _check_probability(p)
    if p > 0.5:  # 1 - p is exact here; refining in the lower tail keeps full relative precision
        return -normal_quantile(1.0 - p)
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        x = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
            (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
    err = normal_cdf(x) - p
    u = err * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf, modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (any real df; the normal CDF for df = inf)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df!r}")
    if math.isinf(df):
        return normal_cdf(t)
    tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for Student's t with df degrees of freedom (bisection on t_cdf, 1e-12 absolute)."""
    _check_probability(p)
    if math.isinf(df):
        return normal_quantile(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, max(1.0, 2.0 * normal_quantile(p))
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    return min(1.0, 2.0 * t_cdf(-abs(t), df))


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (integer sum of binomial coefficients over 2**n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    total, term = 0, 1
    for i in range(k + 1):
        total += term
        term = term * (n - i) // (i + 1)
    return total / 2 ** n


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """McNemar's exact two-sided p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be non-negative")
    return min(1.0, 2.0 * binomial_cdf_half(min(a_only, b_only), a_only + b_only))


def _z(level: float) -> float:
    _check_probability(level, "level")
    return normal_quantile(0.5 + level / 2.0)


# --- one accuracy, one configuration -------------------------------------------------------------
@dataclass(frozen=True)
class BinomialInterval:
    """One accuracy on n images: estimate correct/n, Wilson score interval [low, high], se = sqrt(p(1-p)/n)."""

    estimate: float
    low: float
    high: float
    n: int
    se: float
    level: float = 0.95


def binomial_interval(correct: int, n: int, level: float = 0.95) -> BinomialInterval:
    """Accuracy correct/n with its Wilson score interval (stays inside [0, 1], sound at 0/n and n/n)."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    z = _z(level)
    p = correct / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends at 0/n and n/n (no rounding residue)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return BinomialInterval(estimate=p, low=low, high=high, n=n,
                            se=math.sqrt(p * (1.0 - p) / n), level=level)


@dataclass(frozen=True)
class ReplicateSummary:
    """One configuration over n seeds: mean, sd (n-1), se = sd/sqrt(n), Student-t interval (nan for n = 1, see note)."""

    mean: float
    sd: float
    n: int
    se: float
    low: float
    high: float
    level: float = 0.95
    note: str = ""

    @property
    def estimate(self) -> float:
        """The mean, under the name the other interval classes use."""
        return self.mean


def _values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: need at least one value")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: every value must be finite")
    return arr


def _mean_sd(arr: np.ndarray) -> tuple[float, float]:
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def replicate_summary(values: Sequence[float] | np.ndarray, level: float = 0.95) -> ReplicateSummary:
    """Mean, sd (n-1), se and the Student-t interval mean +- t_{(1+level)/2, n-1} * sd/sqrt(n) of replicate values."""
    arr = _values(values)
    mean, sd = _mean_sd(arr)
    _check_probability(level, "level")
    if arr.size == 1:
        return ReplicateSummary(mean=mean, sd=math.nan, n=1, se=math.nan, low=math.nan, high=math.nan, level=level,
                                note="one replicate: no sd and no interval (needs >= 2 seeds)")
    se = sd / math.sqrt(arr.size)
    half = t_quantile(0.5 + level / 2.0, arr.size - 1) * se
    return ReplicateSummary(mean=mean, sd=sd, n=int(arr.size), se=se, low=mean - half, high=mean + half, level=level)


# --- differences ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """A minus B with its interval [low, high] and a two-sided p-value; nan interval/p when undefined (see note).

    test: "McNemar exact" (paired_difference), "Welch t" or "paired t" (seed_difference). n_a/n_b: images (the
    same n twice for McNemar) or seeds per arm. a_only/b_only: the discordant counts (McNemar only, else -1).
    """

    estimate: float
    low: float
    high: float
    p_value: float
    test: str
    n_a: int
    n_b: int
    se: float
    df: float = math.nan
    a_only: int = -1
    b_only: int = -1
    level: float = 0.95
    note: str = ""

    @property
    def distinguishable(self) -> bool | None:
        """True: interval excludes 0 and p < 1 - level; False: neither; None: the two disagree, or are undefined."""
        if math.isnan(self.low) or math.isnan(self.p_value):
            return None
        excludes = self.low > 0 or self.high < 0
        significant = self.p_value < 1.0 - self.level
        return excludes if excludes == significant else None


def paired_difference(a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray,
                      level: float = 0.95) -> Difference:
    """acc(A) - acc(B) on the same images: Agresti-Min interval from the discordant counts, McNemar's exact p.

    With n10 = #(A right, B wrong), n01 = #(A wrong, B right): estimate (n10 - n01)/n; interval: the Wald
    interval of the paired difference after adding 1/2 to each cell of the 2x2 table (Agresti & Min 2005),
    d' +- z * sqrt((n10' + n01') - (n10' - n01')^2/n') / n' with n10' = n10 + 1/2, n01' = n01 + 1/2, n' = n + 2.
    """
    a = np.asarray(a_correct, dtype=bool).ravel()
    b = np.asarray(b_correct, dtype=bool).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"need the same, non-zero number of images for both models, got {a.size} and {b.size}")
    n, n10, n01 = int(a.size), int((a & ~b).sum()), int((~a & b).sum())
    z = _z(level)
    b1, c1, n1 = n10 + 0.5, n01 + 0.5, n + 2.0
    se = math.sqrt((b1 + c1) - (b1 - c1) ** 2 / n1) / n1
    centre = (b1 - c1) / n1
    return Difference(estimate=(n10 - n01) / n, low=max(-1.0, centre - z * se), high=min(1.0, centre + z * se),
                      p_value=mcnemar_exact_p(n10, n01), test="McNemar exact", n_a=n, n_b=n, se=se,
                      a_only=n10, b_only=n01, level=level)


def seed_difference(a_values: Sequence[float] | np.ndarray, b_values: Sequence[float] | np.ndarray,
                    level: float = 0.95, paired: bool = False) -> Difference:
    """mean(A) - mean(B) across seeds: Welch's t (Welch-Satterthwaite df), or the paired t-test when paired=True.

    Welch: se^2 = s_a^2/n_a + s_b^2/n_b, df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)).
    Paired (same seeds, in the same order): d_i = a_i - b_i, se = sd(d)/sqrt(n), df = n - 1.
    Interval: estimate +- t_{(1+level)/2, df} * se; p = P(|T_df| >= |estimate/se|).
    """
    a, b = _values(a_values, "a_values"), _values(b_values, "b_values")
    _check_probability(level, "level")
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired=True needs the same seeds for both, got {a.size} and {b.size} values")
        diff_mean, diff_sd = _mean_sd(a - b)
        se, df, test = diff_sd / math.sqrt(a.size), float(a.size - 1), "paired t"
        estimate = diff_mean
    else:
        (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
        va, vb = sa * sa / a.size, sb * sb / b.size
        se, test, estimate = math.sqrt(va + vb), "Welch t", ma - mb
        df = (va + vb) ** 2 / (va * va / (a.size - 1) + vb * vb / (b.size - 1)) if se > 0 else math.nan
    base = dict(estimate=estimate, test=test, n_a=int(a.size), n_b=int(b.size), level=level)
    if math.isnan(se) or se == 0:
        why = ("each configuration needs >= 2 seeds" if math.isnan(se)
               else "the replicates do not vary (sd 0), so there is no t interval")
        return Difference(low=math.nan, high=math.nan, p_value=math.nan, se=se, df=math.nan, note=why, **base)
    half = t_quantile(0.5 + level / 2.0, df) * se
    return Difference(low=estimate - half, high=estimate + half, p_value=_t_two_sided_p(estimate / se, df),
                      se=se, df=df, **base)


# --- planning ------------------------------------------------------------------------------------
def minimum_detectable_difference(n_images: int, accuracy: float = 0.55, level: float = 0.95, power: float = 0.8,
                                  seeds: int = 1, seed_sd: float = 0.0) -> float:
    """Smallest accuracy difference (fraction) two configurations can show with this power: two-sample normal approx.

    MDD = (z_{(1+level)/2} + z_{power}) * sqrt(2 * (p(1-p)/n_images + seed_sd^2) / seeds): each arm's mean over
    `seeds` runs has variance (binomial variance of one accuracy + seed-to-seed variance) / seeds, and the
    difference of two independent arms twice that. n_images=1000, p=0.55: se of one accuracy sqrt(0.2475/1000)
    = 1.57 points, MDD = 2.8016 * sqrt(2) * 1.57 = 6.2 points. Conservative for two models scored on the same
    images (their errors are positively correlated, which a paired test exploits).
    """
    if n_images <= 0 or seeds <= 0:
        raise ValueError(f"n_images and seeds must be positive, got {n_images} and {seeds}")
    if not 0.0 <= accuracy <= 1.0 or seed_sd < 0:
        raise ValueError(f"need 0 <= accuracy <= 1 and seed_sd >= 0, got {accuracy} and {seed_sd}")
    _check_probability(power, "power")
    per_arm = accuracy * (1.0 - accuracy) / n_images + seed_sd ** 2
    return (_z(level) + normal_quantile(power)) * math.sqrt(2.0 * per_arm / seeds)


# --- words and tables ----------------------------------------------------------------------------
def _points(x: float) -> str:
    return f"{round(100.0 * x, 1) + 0.0:+.1f}"  # + 0.0: a difference that rounds to zero reads +0.0, not -0.0


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2f}" if p >= 0.1 else f"p={p:.2g}"


def verdict(winner: str, runner_up: str, diff: Difference) -> str:
    """One quotable sentence: winner minus runner-up, its interval and test, and whether the data resolve it."""
    pct = f"{100 * diff.level:g} %"
    head = f"{winner} vs {runner_up}: {_points(diff.estimate)} points"
    sizes = (f"{diff.n_a} paired images" if diff.test == "McNemar exact"
             else f"{diff.n_a} paired seeds" if diff.test == "paired t" else f"{diff.n_a} vs {diff.n_b} seeds")
    if math.isnan(diff.low) or math.isnan(diff.p_value):
        return f"{head} ({diff.test}, {sizes}): cannot be judged: {diff.note or 'no interval'}"
    stats = f"({pct} CI {_points(diff.low)} to {_points(diff.high)}, {diff.test} {_p_text(diff.p_value)}, {sizes})"
    alpha = f"{100 * (1 - diff.level):.2g} %"
    call = diff.distinguishable
    if call is None:
        side = "excludes" if diff.low > 0 or diff.high < 0 else "includes"
        return (f"{head} {stats}: borderline: the interval {side} 0 but the test "
                f"{'does not reach' if side == 'excludes' else 'reaches'} the {alpha} level")
    if call:
        better = winner if diff.low > 0 else runner_up
        return f"{head} {stats}: distinguishable at the {alpha} level, {better} is better (the interval excludes 0)"
    return (f"{head} {stats}: not distinguishable at this sample size (the interval includes 0; "
            "this is not evidence that they are equal)")


def format_interval(summary: BinomialInterval | ReplicateSummary | Difference, digits: int = 3,
                    scale: float = 1.0) -> str:
    """'0.553 [0.522, 0.584]' for any result with estimate/low/high (scale=100 for %); '(no interval)' when nan."""
    est = f"{scale * summary.estimate:.{digits}f}"
    if math.isnan(summary.low) or math.isnan(summary.high):
        n = getattr(summary, "n", None)
        return f"{est} ({f'n={n}, ' if n is not None else ''}no interval)"
    return f"{est} [{scale * summary.low:.{digits}f}, {scale * summary.high:.{digits}f}]"
