"""stats.py against published and hand-computed figures, and its edge cases."""
from __future__ import annotations

import math

import pytest

from toolace_r.stats import Z95, _t_quantile, binomial_two_sided, mcnemar, paired_bootstrap, t_interval, wilson_interval


# ------------------------------------------------------------------------------------------------ Wilson
def test_wilson_15_of_100():
    """The Wilson score interval of 15/100 (Newcombe 1998's method 3): 0.0931 to 0.2328."""
    lo, hi = wilson_interval(15, 100)
    assert lo == pytest.approx(0.0931, abs=5e-5) and hi == pytest.approx(0.2328, abs=5e-5)


def test_wilson_matches_newcombe_1998_table():
    """Newcombe (1998), Stat. Med. 17:857, the Wilson score column of its worked examples."""
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=5e-5)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing known
    z2 = Z95 ** 2
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z2 / (10 + z2))  # closed form for k = 0
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / (10 + z2))  # and for k = n
    lo, hi = wilson_interval(7, 20)
    assert 0.0 < lo < 7 / 20 < hi < 1.0
    assert wilson_interval(13, 20) == pytest.approx((1 - hi, 1 - lo))  # symmetric in k ↔ n − k
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


# ------------------------------------------------------------------------------------------------ Student t
@pytest.mark.parametrize("df,quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_table(df, quantile):
    assert _t_quantile(df, 0.975) == pytest.approx(quantile, abs=5e-4)


def test_t_interval_by_hand():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, df 2
    half = 4.3027 / math.sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half, abs=1e-3) and hi == pytest.approx(2 + half, abs=1e-3)
    mean, lo, hi = t_interval([0.50, 0.52, 0.48, 0.51, 0.49])  # df 4, sd 0.0158
    half = 2.7764 * math.sqrt(0.001 / 4) / math.sqrt(5)
    assert mean == pytest.approx(0.50) and hi - mean == pytest.approx(half, abs=1e-5) and mean - lo == pytest.approx(half, abs=1e-5)


def test_t_interval_edges():
    assert t_interval([0.4]) == (0.4, 0.4, 0.4)  # one run: no spread known
    assert t_interval([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    with pytest.raises(ValueError):
        t_interval([])
    with pytest.raises(ValueError):
        _t_quantile(0)


# ------------------------------------------------------------------------------------------------ McNemar
def test_mcnemar_exact_by_hand():
    # 10 items: both right on 2, only a on 1, only b on 6, neither on 1.
    a = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0]
    result = mcnemar([bool(x) for x in a], [bool(x) for x in b])
    # 7 discordant pairs, 1 vs 6: p = 2 · (C(7,0) + C(7,1)) / 2^7 = 16 / 128
    assert result == {"n": 10, "a_only": 1, "b_only": 6, "p_value": pytest.approx(0.125)}
    assert mcnemar(b, a)["p_value"] == pytest.approx(0.125)  # two-sided: symmetric
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)  # 0 vs 5
    assert binomial_two_sided(0, 10) == pytest.approx(2 / 1024)


def test_mcnemar_edges():
    assert mcnemar([], []) == {"n": 0, "a_only": 0, "b_only": 0, "p_value": 1.0}
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0  # no discordant item
    assert mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)["p_value"] == 1.0  # 3 vs 3, capped at 1
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


# ------------------------------------------------------------------------------------------------ bootstrap
def test_paired_bootstrap():
    a = [True] * 20 + [False] * 80
    b = [True] * 60 + [False] * 40  # b gets 40 more items right, none fewer
    r = paired_bootstrap(a, b, n_resamples=500, seed=1)
    assert r["diff"] == pytest.approx(0.4) and r["ci95"][0] > 0.25 and r["ci95"][1] < 0.55 and r["p_value"] == 0.0
    assert paired_bootstrap(a, b, n_resamples=500, seed=1) == r  # deterministic for a seed
    same = paired_bootstrap(a, a, n_resamples=200)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert paired_bootstrap([], []) == {"n": 0, "diff": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
    with pytest.raises(ValueError):
        paired_bootstrap([True], [])
