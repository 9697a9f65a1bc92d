"""compare.py's statistics against SciPy, the independent reference (a test-only dependency)."""
import math

import numpy as np
import pytest
from scipy import stats

import compare


def exact_p(b, c):
    """The two-sided exact binomial p in integers: C(n, k - 1) = C(n, k) k / (n - k + 1)."""
    n, m = b + c, min(b, c)
    if n == 0:
        return 1.0
    term = math.comb(n, m)
    tail = term
    for k in range(m, 0, -1):
        term = term * k // (n - k + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)  # one correctly rounded division


#### McNemar

def test_mcnemar_matches_the_integer_definition_for_every_small_table():
    for b in range(61):
        for c in range(61):
            assert compare.mcnemar_exact_p(b, c) == pytest.approx(exact_p(b, c), rel=1e-13, abs=0)


PAIRS = ([(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (3, 7), (7, 3), (10, 1), (25, 25),
          (25, 26), (26, 25), (100, 140), (450, 550), (999, 1), (0, 1000), (1, 2000)]
         + [(b, 9000 - b) for b in (4000, 4400, 4490)]
         + [(b, 20000 - b) for b in (0, 9, 8000, 9500, 9950, 10000)]
         + [(b, 100_000 - b) for b in (44_000, 45_000, 48_000, 49_500, 50_000)]
         + [(1, 1073), (0, 1074), (3, 1100), (12_000, 30_000)])


@pytest.mark.parametrize("b, c", PAIRS)
def test_mcnemar_matches_scipys_binomial_test(b, c):
    ours = compare.mcnemar_exact_p(b, c)
    ref = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    if ref > 1e-300:  # a normal float: relative agreement
        assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    else:  # subnormal or underflowed: only absolute agreement is meaningful
        assert 0.0 <= ours < 1e-299 and abs(ours - ref) < 1e-300


def test_mcnemar_is_symmetric_and_exact_where_the_answer_is_a_power_of_two():
    assert compare.mcnemar_exact_p(0, 10) == compare.mcnemar_exact_p(10, 0) == 2 / 2 ** 10
    assert compare.mcnemar_exact_p(0, 2000) == 0.0  # 2^-1999 underflows
    assert compare.mcnemar_exact_p(4400, 4600) == compare.mcnemar_exact_p(4600, 4400)
    assert compare.mcnemar_exact_p(50_000, 50_001) == 1.0


#### Paired bootstrap

def test_bootstrap_ci_agrees_with_scipys_paired_percentile_bootstrap():
    n, corrected, worsened, resamples = 10_000, 600, 400, 10_000
    base, impr = np.ones(n), np.ones(n)  # 1 where that model is right on the image
    base[:corrected] = 0
    impr[corrected:corrected + worsened] = 0
    base[-1500:] = impr[-1500:] = 0  # both wrong: these must not move the interval
    ref = stats.bootstrap((base, impr), lambda x, y, axis=-1: y.mean(axis) - x.mean(axis),
                          paired=True, vectorized=True, method="percentile",
                          n_resamples=resamples, batch=500, rng=np.random.default_rng(0))
    ours = compare.bootstrap_ci(corrected, worsened, n, resamples, seed=0)
    # Monte-Carlo tolerance: a 2.5% quantile estimated from R resamples has standard error
    # sqrt(q (1 - q) / R) / density there; the resampled difference is ~ normal with sd sigma,
    # so the density is phi(1.96) / sigma. Two independent estimates differ by sqrt(2) times
    # that; allow 5 of those (a false alarm ~1e-6) plus one 1/n step of the lattice the
    # differences live on. Here that is ~0.07 percentage points.
    sigma = math.sqrt(((corrected + worsened) / n - ((corrected - worsened) / n) ** 2) / n)
    phi = math.exp(-1.96 ** 2 / 2) / math.sqrt(2 * math.pi)
    se_quantile = math.sqrt(0.025 * 0.975 / resamples) * sigma / phi
    tol = 5 * math.sqrt(2) * se_quantile + 1 / n
    assert tol < 0.001
    interval = ref.confidence_interval
    assert ours[0] == pytest.approx(interval.low, abs=tol)
    assert ours[1] == pytest.approx(interval.high, abs=tol)
    # Both also sit where the normal approximation puts the interval, 0.02 +- 1.96 sigma.
    assert ours == pytest.approx([0.02 - 1.96 * sigma, 0.02 + 1.96 * sigma], abs=tol)
