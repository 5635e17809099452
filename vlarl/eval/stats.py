"""Small-sample statistics for success rates (numpy only, no scipy at run time).

Evaluations here are tens to hundreds of 0/1 episodes, where the textbook normal
("Wald") interval is badly behaved near 0 % and 100 %. So:

* one success rate  -> Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001
  recommend it for small n);
* two checkpoints evaluated on the SAME seeds -> a paired comparison: the difference of
  success rates with Newcombe's square-and-add interval for paired proportions
  (Newcombe 1998, Stat. Med. 17:2635, "method 10"), and McNemar's exact test (a two-sided
  binomial test on the discordant seeds). Pairing matters: when both policies solve the
  easy seeds, the paired interval is much narrower than two independent intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def _check_counts(successes: int, n: int) -> None:
    if n <= 0:
        raise ValueError(f"n={n} must be > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in [0, n={n}]")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    ``z=1.96`` gives 95 %. Unlike the Wald interval it never leaves [0, 1] and is not
    zero-width at 0 or n successes (0/10 -> [0, 0.278]).
    """
    _check_counts(successes, n)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The exact limits at 0 and n successes are 0 and 1; don't let rounding move them.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _as_binary(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d 0/1 vector, got shape {arr.shape}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must hold only 0/1 (or bools), got {arr[bad][:5].tolist()}")
    return arr.astype(bool)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``.

    Under H0 (equal success rates) each of the ``b + c`` discordant pairs goes either way
    with probability 1/2, so the p-value is the two-sided binomial tail
    ``min(1, 2 * P[X <= min(b, c)])``, ``X ~ Bin(b + c, 1/2)``. No discordant pairs -> 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts b={b}, c={c} must be >= 0")
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    # Exact integer arithmetic: the tail of Bin(m, 1/2) is sum_{i<=k} C(m, i) / 2^m.
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


@dataclass
class PairedComparison:
    """Candidate vs baseline success on the same seeds (difference = candidate - baseline)."""

    n: int
    """Paired episodes (seeds)."""
    baseline_rate: float
    candidate_rate: float
    difference: float
    """``candidate_rate - baseline_rate``."""
    ci_low: float
    ci_high: float
    """95 % (or ``z``-level) Newcombe square-and-add interval of the paired difference."""
    both: int
    """Seeds both policies solved."""
    only_candidate: int
    """Seeds only the candidate solved (discordant, in its favour)."""
    only_baseline: int
    """Seeds only the baseline solved (discordant, against it)."""
    neither: int
    p_value: float
    """Exact McNemar two-sided p-value."""
    method: str = "newcombe-paired-square-and-add + mcnemar-exact"

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(baseline, candidate, z: float = 1.96) -> PairedComparison:
    """Compare two 0/1 success vectors measured on the same seeds (same order).

    The interval is Newcombe's (1998) square-and-add for paired proportions: Wilson
    intervals ``[l1, u1]``, ``[l2, u2]`` of both marginal rates, combined with the phi
    correlation of the 2x2 table (with Newcombe's continuity adjustment of phi):

        L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2 - 2 phi (p1 - l1)(u2 - p2))
        U = d + sqrt((p2 - l2)^2 + (u1 - p1)^2 - 2 phi (p2 - l2)(u1 - p1))

    with p1 = candidate rate, p2 = baseline rate, d = p1 - p2.
    """
    base = _as_binary("baseline", baseline)
    cand = _as_binary("candidate", candidate)
    if base.shape != cand.shape:
        raise ValueError(f"paired vectors need equal length, got baseline={base.size}, "
                         f"candidate={cand.size}")
    n = int(base.size)
    if n == 0:
        raise ValueError("n=0: paired comparison needs at least one seed")
    # 2x2 table, rows = candidate (success, failure), columns = baseline (success, failure).
    n11 = int(np.sum(cand & base))
    n12 = int(np.sum(cand & ~base))
    n21 = int(np.sum(~cand & base))
    n22 = int(np.sum(~cand & ~base))
    r1, r2, c1, c2 = n11 + n12, n21 + n22, n11 + n21, n12 + n22
    p1, p2 = r1 / n, c1 / n
    d = p1 - p2
    l1, u1 = wilson_interval(r1, n, z)
    l2, u2 = wilson_interval(c1, n, z)
    if min(r1, r2, c1, c2) == 0:
        phi = 0.0
    else:
        a = n11 * n22 - n12 * n21
        # Newcombe's adjustment: shrink a positive association by n/2, leave negative ones.
        a_adj = a - n / 2 if a > n / 2 else (0.0 if a >= 0 else a)
        phi = a_adj / math.sqrt(r1 * r2 * c1 * c2)
    dl, du = p1 - l1, u2 - p2
    lo = d - math.sqrt(max(0.0, dl * dl + du * du - 2 * phi * dl * du))
    dl2, du2 = p2 - l2, u1 - p1
    hi = d + math.sqrt(max(0.0, dl2 * dl2 + du2 * du2 - 2 * phi * dl2 * du2))
    return PairedComparison(
        n=n, baseline_rate=p2, candidate_rate=p1, difference=d,
        ci_low=max(-1.0, lo), ci_high=min(1.0, hi),
        both=n11, only_candidate=n12, only_baseline=n21, neither=n22,
        p_value=mcnemar_exact_p(n12, n21),
    )


def success_summary(successes, z: float = 1.96) -> dict:
    """``{"n", "successes", "rate", "ci_low", "ci_high"}`` of a 0/1 vector (Wilson CI)."""
    arr = _as_binary("successes", successes)
    if arr.size == 0:
        raise ValueError("n=0: a success rate needs at least one episode")
    k, n = int(arr.sum()), int(arr.size)
    lo, hi = wilson_interval(k, n, z)
    return {"n": n, "successes": k, "rate": k / n, "ci_low": lo, "ci_high": hi}
