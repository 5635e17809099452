"""vlarl.eval.stats against published / reference numbers (scipy is used only as a reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from vlarl.eval.stats import mcnemar_exact_p, paired_comparison, success_summary, wilson_interval

Z95 = float(norm.ppf(0.975))


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1), (37, 100), (0, 1)])
def test_wilson_matches_scipy(k, n):
    lo, hi = wilson_interval(k, n, z=Z95)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_hand_computed():
    # 0/10 has lower limit exactly 0 and upper z^2/(n+z^2) = 3.8416/13.8416.
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(3.8416 / 13.8416, abs=1e-12)
    # Symmetric at k = n/2: centre is exactly 0.5.
    lo, hi = wilson_interval(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=1e-12)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.025 + 1.96**2 / 400) / 1.38416,
                                    abs=1e-12)


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, 0)])
def test_wilson_bad_counts_named(k, n):
    with pytest.raises(ValueError, match=rf"{k if n > 0 else 'n=0'}"):
        wilson_interval(k, n)


def _table_vectors(n11, n12, n21, n22):
    """Candidate/baseline 0/1 vectors for a paired 2x2 table (rows: candidate)."""
    cand = [1] * n11 + [1] * n12 + [0] * n21 + [0] * n22
    base = [1] * n11 + [0] * n12 + [1] * n21 + [0] * n22
    return np.array(base), np.array(cand)


def test_paired_newcombe_reference():
    # Cavo et al. (2012) table from Fagerland, Lydersen & Laake, "Statistical Analysis of
    # Contingency Tables", ch. 8; their Newcombe square-and-add result:
    # estimate -0.0621, 95 % CI -0.1186 to -0.0046.
    base, cand = _table_vectors(59, 6, 16, 80)
    cmp = paired_comparison(base, cand)
    assert cmp.n == 161
    assert cmp.difference == pytest.approx(-10 / 161, abs=1e-12)
    assert cmp.ci_low == pytest.approx(-0.1186, abs=5e-5)
    assert cmp.ci_high == pytest.approx(-0.0046, abs=5e-5)
    assert (cmp.both, cmp.only_candidate, cmp.only_baseline, cmp.neither) == (59, 6, 16, 80)
    # Exact McNemar = two-sided binomial test on 6 of 22 discordant pairs.
    assert cmp.p_value == pytest.approx(binomtest(6, 22, 0.5).pvalue, abs=1e-12)
    assert cmp.p_value == pytest.approx(0.0525, abs=5e-5)


def test_paired_identical_and_swapped():
    x = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    same = paired_comparison(x, x)
    assert same.difference == 0.0 and same.p_value == 1.0
    assert same.ci_low < 0.0 < same.ci_high
    base, cand = _table_vectors(3, 5, 1, 7)
    ab, ba = paired_comparison(base, cand), paired_comparison(cand, base)
    assert ab.difference == pytest.approx(4 / 16)
    assert ba.difference == pytest.approx(-ab.difference)
    # Swapping roles mirrors the interval.
    assert ba.ci_low == pytest.approx(-ab.ci_high) and ba.ci_high == pytest.approx(-ab.ci_low)
    assert ab.p_value == pytest.approx(binomtest(1, 6).pvalue)


def test_mcnemar_hand_computed():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(1, 4) == pytest.approx(2 * 6 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0


def test_paired_bad_inputs_named():
    with pytest.raises(ValueError, match="baseline=3, candidate=2"):
        paired_comparison([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"\[2\]"):
        paired_comparison([1, 2], [1, 0])
    with pytest.raises(ValueError, match="n=0"):
        paired_comparison([], [])


def test_success_summary():
    s = success_summary([True, False, True, True])
    assert s["n"] == 4 and s["successes"] == 3 and s["rate"] == 0.75
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(wilson_interval(3, 4))
