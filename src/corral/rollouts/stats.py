"""Two one-sided tests, written out (no SciPy): is the canary worse than the baseline?

* ``fisher_greater``: Fisher's exact test on a 2x2 table, one-sided. Failure counts of a
  rollout are small (tens of runs) and often near 0 on the baseline, where the normal
  approximation of the two-proportion z-test is poor; the exact test has no such limit.
* ``mann_whitney_greater``: the Mann-Whitney U test (Wilcoxon rank-sum), one-sided, for
  cost per run. Costs are skewed (a few long runs cost most), so a rank test, which
  assumes no distribution, rather than Welch's t on the means. Exact (by counting) for
  small samples without ties, else the normal approximation with the tie correction and
  a continuity correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fisher_greater", "mann_whitney_greater", "normal_sf", "rank"]

#: Below this many values in both samples together (and without ties), the exact
#: distribution of U is counted; above, the normal approximation is close enough.
EXACT_LIMIT = 40


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(a_fail: int, a_total: int, b_fail: int, b_total: int) -> float:
    """One-sided p-value that sample A's failure proportion is greater than B's.

    The 2x2 table [[a_fail, a_total - a_fail], [b_fail, b_total - b_fail]] with its
    margins fixed: the probability, under the hypergeometric law, of A having ``a_fail``
    failures or more. 1.0 when either sample is empty or nothing failed.
    """
    for name, value in (("a_fail", a_fail), ("b_fail", b_fail)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if a_fail > a_total or b_fail > b_total:
        raise ValueError("failures cannot exceed the runs of their sample")
    if a_total == 0 or b_total == 0:
        return 1.0
    fails = a_fail + b_fail
    total = a_total + b_total
    if fails == 0:
        return 1.0
    log_denominator = _log_choose(total, fails)
    top = min(fails, a_total)
    p = 0.0
    for x in range(a_fail, top + 1):
        if fails - x > b_total:
            continue
        p += math.exp(_log_choose(a_total, x) + _log_choose(b_total, fails - x) - log_denominator)
    return min(1.0, p)


def rank(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean
        i = j + 1
    return ranks


def _exact_u_sf(u: float, n1: int, n2: int) -> float:
    """P(U >= u) under the null for samples of n1 and n2 values without ties: the number
    of arrangements with each U, counted by the recurrence of Mann and Whitney (1947)."""
    # counts[i][j] = arrangements of i and j values, as polynomials in U
    max_u = n1 * n2
    previous = [[1] + [0] * max_u for _ in range(n2 + 1)]  # i = 0: U = 0
    for _ in range(n1):
        current = [[0] * (max_u + 1) for _ in range(n2 + 1)]
        current[0][0] = 1
        for j in range(1, n2 + 1):
            # the largest value is from sample 1 (adds j to U) or from sample 2
            for k in range(max_u + 1):
                count = current[j - 1][k]
                if k >= j:
                    count += previous[j][k - j]
                current[j][k] = count
        previous = current
    counts = previous[n2]
    total = sum(counts)
    threshold = math.ceil(u - 1e-9)
    return sum(counts[threshold:]) / total


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U, one-sided p-value) that values of A tend to be greater than those of B.

    U counts the pairs (x from A, y from B) with x > y, ties counting one half. 1.0 when
    a sample is empty.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    ranks = rank([*a, *b])
    r1 = sum(ranks[:n1])
    u = r1 - n1 * (n1 + 1) / 2
    tied = len(set(ranks)) < len(ranks)
    if not tied and n1 + n2 <= EXACT_LIMIT:
        return u, _exact_u_sf(u, n1, n2)
    n = n1 + n2
    counts: dict[float, int] = {}
    for r in ranks:
        counts[r] = counts.get(r, 0) + 1
    tie_term = sum(t**3 - t for t in counts.values()) / (n * (n - 1))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:  # every value equal: no evidence either way
        return u, 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return u, normal_sf(z)
