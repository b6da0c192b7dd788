"""analysis.stats against hand-computed values and published tables (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import stats

Z975 = 1.959963984540054  # normal 0.975 quantile (tables: 1.959964)


@pytest.mark.parametrize("p, df, table", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 9, 2.262157),
    (0.975, 30, 2.042272), (0.995, 9, 3.249836), (0.95, 2, 2.919986), (0.025, 4, -2.776445),
])
def test_t_quantile_matches_published_tables(p, df, table):
    assert stats.t_quantile(p, df) == pytest.approx(table, abs=1e-5)
    assert stats.t_cdf(table, df) == pytest.approx(p, abs=1e-7)


def test_normal_quantile_and_the_t_limit():
    assert stats.normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-5)
    assert stats.normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-5)
    assert stats.normal_quantile(0.5) == 0.0
    assert stats.normal_quantile(0.001) == pytest.approx(-3.090232, abs=1e-5)
    assert stats.normal_quantile(1 - 1e-6) == pytest.approx(4.753424, abs=1e-5)
    assert stats.t_quantile(0.975, math.inf) == stats.normal_quantile(0.975)
    assert stats.t_quantile(0.975, 1e5) == pytest.approx(1.959964, abs=1e-4)
    # df = 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 0.75
    assert stats.t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    with pytest.raises(ValueError):
        stats.normal_quantile(1.0)


def test_wilson_interval_55_of_100():
    # p = 0.55, z^2/n = 3.841459/100 = 0.03841459
    # centre = (0.55 + 0.01920729) / 1.03841459 = 0.56920729 / 1.03841459 = 0.54815033
    # half = 1.959964/1.03841459 * sqrt(0.55*0.45/100 + 3.841459/40000) = 1.887458 * sqrt(0.002475 + 0.00009604)
    #      = 1.887458 * 0.05070539 = 0.09570430  ->  [0.452446, 0.643855]
    r = stats.binomial_interval(55, 100)
    assert (r.estimate, r.n) == (0.55, 100)
    assert r.se == pytest.approx(math.sqrt(0.55 * 0.45 / 100))  # 0.049749
    assert r.low == pytest.approx(0.452446, abs=1e-5) and r.high == pytest.approx(0.643855, abs=1e-5)
    assert r.low < r.estimate < r.high


def test_wilson_interval_stays_in_0_1_at_the_ends():
    # 0/10: centre = (z^2/20)/(1 + z^2/10) = half, so low = 0 and high = (z^2/10)/(1 + z^2/10) = 0.3841459/1.3841459
    zero = stats.binomial_interval(0, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.3841459 / 1.3841459, abs=1e-6)  # 0.277533
    full = stats.binomial_interval(10, 10)  # the mirror image: [1 - 0.277533, 1]
    assert full.high == 1.0 and full.low == pytest.approx(1 - zero.high, abs=1e-12)
    assert zero.se == full.se == 0.0
    with pytest.raises(ValueError):
        stats.binomial_interval(11, 10)


def test_replicate_summary_and_its_t_interval():
    # mean 0.62, deviations -0.02, 0, 0.02: sd = sqrt(0.0008/2) = 0.02, se = 0.02/sqrt(3) = 0.011547
    # t_{0.975, 2} = 4.302653: half = 4.302653 * 0.011547 = 0.049683 -> [0.570317, 0.669683]
    r = stats.replicate_summary([0.60, 0.62, 0.64])
    assert (r.n, r.mean, r.estimate) == (3, pytest.approx(0.62), pytest.approx(0.62))
    assert r.sd == pytest.approx(0.02) and r.se == pytest.approx(0.02 / math.sqrt(3))
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert r.low == pytest.approx(0.62 - half, abs=1e-6) and r.high == pytest.approx(0.62 + half, abs=1e-6)
    assert stats.format_interval(r) == "0.620 [0.570, 0.670]"
    one = stats.replicate_summary([0.61])
    assert one.mean == 0.61 and math.isnan(one.sd) and math.isnan(one.low) and math.isnan(one.high)
    assert "no interval" in one.note and stats.format_interval(one) == "0.610 (n=1, no interval)"


def test_exact_binomial_tail_and_mcnemar():
    # P(X <= 2 | 12, 1/2) = (1 + 12 + 66) / 4096 = 79/4096; two-sided p = 158/4096 = 0.0385742
    assert stats.binomial_cdf_half(2, 12) == 79 / 4096
    assert stats.mcnemar_exact_p(10, 2) == stats.mcnemar_exact_p(2, 10) == pytest.approx(0.03857, abs=1e-5)
    assert stats.mcnemar_exact_p(3, 3) == 1.0 and stats.mcnemar_exact_p(0, 0) == 1.0
    # 0 vs 5: 2 * (1/2)^5 = 0.0625
    assert stats.mcnemar_exact_p(0, 5) == 0.0625
    assert 0 < stats.mcnemar_exact_p(500, 600) < 0.01  # big n: exact integers, no overflow


def _paired(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return np.array(a), np.array(b)


def test_paired_difference_is_distinguishable_when_clearly_different():
    # n = 100, A-only 10, B-only 2: estimate (10 - 2)/100 = 0.08, McNemar p = 0.03857
    # Agresti-Min: b' = 10.5, c' = 2.5, n' = 102, centre 8/102 = 0.0784314,
    # se = sqrt(13 - 64/102)/102 = sqrt(12.372549)/102 = 0.0344849, half = 1.959964 * se = 0.0675898
    d = stats.paired_difference(*_paired(50, 10, 2, 38))
    assert (d.estimate, d.a_only, d.b_only, d.n_a, d.test) == (pytest.approx(0.08), 10, 2, 100, "McNemar exact")
    assert d.se == pytest.approx(math.sqrt(13 - 64 / 102) / 102)
    assert d.low == pytest.approx(8 / 102 - Z975 * d.se) and d.high == pytest.approx(8 / 102 + Z975 * d.se)
    assert d.low == pytest.approx(0.010842, abs=1e-6) and d.p_value == pytest.approx(0.03857, abs=1e-5)
    assert d.distinguishable is True
    text = stats.verdict("alpha_ratio=5", "alpha_ratio=1", d)
    assert text == ("alpha_ratio=5 vs alpha_ratio=1: +8.0 points (95 % CI +1.1 to +14.6, McNemar exact p=0.039, "
                    "100 paired images): distinguishable at the 5 % level, alpha_ratio=5 is better "
                    "(the interval excludes 0)")


def test_paired_difference_is_not_distinguishable_within_the_noise():
    # 1000 images, A-only 60, B-only 50: +1.0 point, p = 2 P(X <= 50 | 110) = 0.39
    d = stats.paired_difference(*_paired(500, 60, 50, 390))
    assert d.estimate == pytest.approx(0.01) and d.low < 0 < d.high and d.p_value > 0.3
    assert d.distinguishable is False
    text = stats.verdict("alpha_ratio=5", "alpha_ratio=1", d)
    assert text.startswith("alpha_ratio=5 vs alpha_ratio=1: +1.0 points (95 % CI -1.")
    assert text.endswith(": not distinguishable at this sample size (the interval includes 0; "
                         "this is not evidence that they are equal)")
    # the runner-up clearly better: the sentence names it
    worse = stats.paired_difference(*_paired(500, 10, 80, 410))
    assert worse.distinguishable is True
    assert "alpha_ratio=1 is better" in stats.verdict("alpha_ratio=5", "alpha_ratio=1", worse)
    with pytest.raises(ValueError):
        stats.paired_difference([True, False], [True])


def test_welch_difference_across_seeds():
    # A = [0.60, 0.62, 0.64]: mean 0.62, s^2 = 0.0004; B = [0.55, 0.56, 0.60]: mean 0.57, s^2 = 0.0014/2 = 0.0007
    # se^2 = 0.0004/3 + 0.0007/3 = 0.0011/3, se = 0.0191485; t = 0.05/0.0191485 = 2.611165
    # df = (0.0011/3)^2 / ((0.0004/3)^2/2 + (0.0007/3)^2/2) = (1.21e-6/9) / (6.5e-7/18) = 2*1.21/0.65 = 3.723077
    # p = 2 P(T_3.723 > 2.611165) = 0.063811 (scipy.stats.ttest_ind(equal_var=False) gives the same)
    d = stats.seed_difference([0.60, 0.62, 0.64], [0.55, 0.56, 0.60])
    assert d.test == "Welch t" and (d.n_a, d.n_b) == (3, 3)
    assert d.estimate == pytest.approx(0.05) and d.se == pytest.approx(math.sqrt(0.0011 / 3))
    assert d.df == pytest.approx(2 * 1.21 / 0.65) and d.p_value == pytest.approx(0.063811, abs=1e-5)
    half = stats.t_quantile(0.975, d.df) * d.se  # t_{0.975, 3.723} = 2.859817 -> [-0.004761, 0.104761]
    assert d.low == pytest.approx(0.05 - half) and d.low == pytest.approx(-0.004761, abs=1e-5)
    assert d.distinguishable is False and "not distinguishable" in stats.verdict("k=5", "k=1", d)
    assert "3 vs 3 seeds" in stats.verdict("k=5", "k=1", d)


def test_paired_seeds_use_the_paired_t_test():
    # differences 0.05, 0.06, 0.04: mean 0.05, sd 0.01, se 0.01/sqrt(3) = 0.0057735, t = 8.660254, df = 2
    # p = 2 P(T_2 > 8.660254) = 0.013072; interval 0.05 +- 4.302653 * 0.0057735 = [0.025159, 0.074841]
    d = stats.seed_difference([0.60, 0.62, 0.64], [0.55, 0.56, 0.60], paired=True)
    assert d.test == "paired t" and d.df == 2 and d.se == pytest.approx(0.01 / math.sqrt(3))
    assert d.p_value == pytest.approx(0.013072, abs=1e-5)
    assert d.low == pytest.approx(0.025159, abs=1e-5) and d.high == pytest.approx(0.074841, abs=1e-5)
    assert d.distinguishable is True
    with pytest.raises(ValueError, match="same seeds"):
        stats.seed_difference([0.6, 0.7], [0.6], paired=True)


def test_seed_difference_without_an_interval_says_why():
    one = stats.seed_difference([0.6], [0.55, 0.56, 0.60])
    assert math.isnan(one.low) and math.isnan(one.p_value) and one.distinguishable is None
    assert stats.verdict("a", "b", one).endswith("cannot be judged: each configuration needs >= 2 seeds")
    flat = stats.seed_difference([0.6, 0.6], [0.5, 0.5])
    assert "do not vary" in stats.verdict("a", "b", flat)


def test_minimum_detectable_difference():
    # one accuracy at p = 0.55 on 1000 images: se = sqrt(0.2475/1000) = 0.0157321 (1.57 points)
    # MDD = (1.959964 + 0.841621) * sqrt(2 * 0.0002475) = 2.801585 * 0.0222486 = 0.0623313 (6.2 points)
    assert stats.binomial_interval(550, 1000).se == pytest.approx(0.0157321, abs=1e-6)
    assert stats.minimum_detectable_difference(1000) == pytest.approx(0.0623313, abs=1e-6)
    # 4x the images halves it; seeds divide the variance; seed noise adds to it
    assert stats.minimum_detectable_difference(4000) == pytest.approx(0.0623313 / 2, abs=1e-6)
    assert stats.minimum_detectable_difference(1000, seeds=3) == pytest.approx(0.0623313 / math.sqrt(3), abs=1e-6)
    # seed_sd 0.01: per arm 0.0002475 + 0.0001 = 0.0003475 over 3 seeds -> 2.801585 * sqrt(2 * 0.0003475/3)
    assert stats.minimum_detectable_difference(1000, seeds=3, seed_sd=0.01) == pytest.approx(
        2.801585 * math.sqrt(2 * 0.0003475 / 3), abs=1e-6)


def test_format_interval():
    assert stats.format_interval(stats.binomial_interval(553, 1000)) == "0.553 [0.522, 0.584]"
    d = stats.paired_difference(*_paired(50, 10, 2, 38))
    assert stats.format_interval(d, digits=1, scale=100) == "8.0 [1.1, 14.6]"
