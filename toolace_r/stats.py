"""Uncertainty of accuracies: what a reader needs before believing that one figure beats another.

- `wilson_interval(k, n)`: 95 % interval of one run's accuracy (k right of n items). Wilson rather than the normal
  approximation because it stays inside [0, 1] and is honest near 0 and 1, where tool-calling accuracies often sit.
- `t_interval(values)`: mean and 95 % interval over independent repeats (seeds) — Student's t, since 3–5 seeds are
  far too few for a normal quantile.
- `mcnemar(a, b)`: two models judged on the same items; exact two-sided McNemar test on the discordant pairs (the
  items only one of them gets right). Paired, so item difficulty cancels out — far more power than comparing two
  intervals.
- `paired_bootstrap(a, b)`: the accuracy difference b − a with a percentile interval from resampling items.

Only the standard library: these run inside reports and tests, where scipy is not a dependency worth adding.
"""
from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Sequence

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996…


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n; (0, 1) when n = 0 (nothing is known)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k = {k} must lie in [0, n = {n}]")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def _t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile by bisection on the CDF (regularised incomplete beta by continued fraction)."""
    if df <= 0:
        raise ValueError("t quantile needs df >= 1")

    def cdf(t: float) -> float:
        x = df / (df + t * t)
        tail = 0.5 * _betainc(df / 2.0, 0.5, x)
        return 1.0 - tail if t > 0 else tail

    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (Numerical Recipes' continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f / a


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean of independent repeats. One value: (v, v, v) — no spread is
    known, and the report says n = 1 next to it."""
    if not values:
        raise ValueError("t_interval of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return (mean, mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(n - 1, 0.5 + confidence / 2) * sd / math.sqrt(n)
    return (mean, mean - half, mean + half)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test of two verdict vectors over the same items.
    {"n", "a_only": items only a gets right, "b_only", "p_value"}; p = 1 when there are no discordant items."""
    if len(a) != len(b):
        raise ValueError(f"mcnemar: {len(a)} vs {len(b)} verdicts; the two runs must judge the same items")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": binomial_two_sided(a_only, a_only + b_only)}


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (the McNemar statistic)."""
    if n == 0:
        return 1.0
    tail = min(k, n - k)
    p = 2.0 * sum(math.comb(n, i) for i in range(tail + 1)) / 2.0 ** n
    return min(1.0, p)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference b − a on the same items with a 95 % percentile interval from resampling items, and a
    two-sided bootstrap p-value (twice the share of resamples on the far side of 0)."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: {len(a)} vs {len(b)} verdicts; the two runs must judge the same items")
    n = len(a)
    if n == 0:
        return {"n": 0, "diff": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
    d = [int(bool(y)) - int(bool(x)) for x, y in zip(a, b)]
    rng = random.Random(seed)
    diffs = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    lo, hi = diffs[int(0.025 * n_resamples)], diffs[min(n_resamples - 1, int(0.975 * n_resamples))]
    below = sum(x <= 0 for x in diffs) / n_resamples
    above = sum(x >= 0 for x in diffs) / n_resamples
    return {"n": n, "diff": sum(d) / n, "ci95": [lo, hi], "p_value": min(1.0, 2 * min(below, above))}
