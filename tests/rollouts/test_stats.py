"""The rollout statistics against textbook values and against counting by brute force."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from corral.rollouts import (
    Rule,
    VersionSample,
    assigned_to_canary,
    checkpoint,
    decide,
    fisher_greater,
    judge,
    look_alpha,
    mann_whitney_greater,
    normal_sf,
    parse_share,
)
from corral.rollouts.stats import rank


def test_normal_tail_known_values() -> None:
    assert normal_sf(0) == pytest.approx(0.5)
    assert normal_sf(1.6448536) == pytest.approx(0.05, abs=1e-7)
    assert normal_sf(1.959964) == pytest.approx(0.025, abs=1e-7)
    assert normal_sf(-1.0) == pytest.approx(0.8413447, abs=1e-7)


def test_fisher_lady_tasting_tea() -> None:
    # Fisher (1935): 3 of 4 cups right against 1 of 4; P = 17/70.
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert fisher_greater(4, 4, 0, 4) == pytest.approx(1 / 70)


def test_fisher_dieting_example() -> None:
    # The dieting table (9 of 12 women, 1 of 12 men dieting): the observed table has
    # probability 0.001346, the one more extreme 0.0000337; one-sided p = 0.001380.
    assert fisher_greater(9, 12, 1, 12) == pytest.approx(0.001380, abs=1e-6)


def test_fisher_against_brute_force_hypergeometric() -> None:
    for a_fail, a_n, b_fail, b_n in [(5, 10, 2, 12), (0, 7, 3, 9), (6, 6, 0, 5), (2, 20, 2, 20)]:
        fails, n = a_fail + b_fail, a_n + b_n
        expected = sum(
            math.comb(a_n, x) * math.comb(b_n, fails - x) / math.comb(n, fails)
            for x in range(a_fail, min(fails, a_n) + 1)
            if fails - x <= b_n
        )
        assert fisher_greater(a_fail, a_n, b_fail, b_n) == pytest.approx(expected)


def test_fisher_edges_and_bad_input() -> None:
    assert fisher_greater(0, 10, 0, 10) == 1.0
    assert fisher_greater(3, 3, 0, 0) == 1.0
    with pytest.raises(ValueError, match="exceed"):
        fisher_greater(5, 3, 0, 3)


def test_ranks_share_ties() -> None:
    assert rank([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]


def _brute_force_u_sf(a: list[float], b: list[float]) -> float:
    """P(U >= u observed), every split of the pooled values equally likely."""
    pooled = [*a, *b]
    ranks = rank(pooled)
    n1 = len(a)
    observed = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    splits = list(itertools.combinations(range(len(pooled)), n1))
    hits = sum(1 for s in splits if sum(ranks[i] for i in s) - n1 * (n1 + 1) / 2 >= observed - 1e-9)
    return hits / len(splits)


def test_mann_whitney_textbook() -> None:
    # Completely separated samples of 3: U = 9, P = 1/C(6,3) = 0.05.
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == (9.0, pytest.approx(0.05))
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == (0.0, pytest.approx(1.0))
    # Samples of 4 and 5, U = 3 + 4 + 4 + 5 = 16 of 20.
    u, p = mann_whitney_greater([7, 9, 10, 12], [1, 3, 8, 2, 11])
    assert u == 16.0
    assert p == pytest.approx(_brute_force_u_sf([7, 9, 10, 12], [1, 3, 8, 2, 11]))


def test_mann_whitney_exact_matches_counting() -> None:
    rng = random.Random(7)
    for _ in range(8):
        n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
        values = rng.sample(range(1000), n1 + n2)
        a, b = values[:n1], values[n1:]
        assert mann_whitney_greater(a, b)[1] == pytest.approx(_brute_force_u_sf(a, b))


def test_mann_whitney_normal_approximation_with_ties() -> None:
    # Ties: the normal approximation (tie and continuity corrections) against counting.
    a = [3, 3, 4, 5, 5, 6, 7, 7]
    b = [1, 2, 3, 3, 4, 4, 5, 6]
    u, p = mann_whitney_greater(a, b)
    assert u == 47.5
    assert p == pytest.approx(_brute_force_u_sf(a, b), abs=0.01)
    # Hand computed: n = 16, mean 32, U = 83.5 - 36 = 47.5, tie groups of sizes 4, 3, 3, 2, 2
    # (ranks 3-6, 7-9, 10-12, 13-14, 15-16): variance = 64/12 * (17 - 120/240) = 88.0
    assert p == pytest.approx(normal_sf((47.5 - 32 - 0.5) / math.sqrt(88.0)))


def test_mann_whitney_large_sample_is_normal() -> None:
    a = [float(x) for x in range(30, 60)]
    b = [float(x) for x in range(0, 30)] + [100.0]
    u, p = mann_whitney_greater(a, b)
    assert u == 30 * 30
    assert p < 1e-9


def test_rule_waits_rolls_back_and_promotes() -> None:
    rule = Rule(min_runs=20, promote_after=30)
    good = VersionSample(runs=40, failures=2, costs=[0.01] * 40)
    assert decide(rule, good, VersionSample(runs=10, failures=10)).action == "wait"
    bad = VersionSample(runs=20, failures=8, costs=[0.01] * 20)
    decision = decide(rule, good, bad)
    assert decision.action == "rollback" and "Fisher" in decision.reason
    assert decision.failure_p < 0.05
    pricey = VersionSample(runs=20, failures=1, costs=[0.03 + i / 1000 for i in range(20)])
    decision = decide(rule, good, pricey)
    assert decision.action == "rollback" and "Mann-Whitney" in decision.reason
    # significant but under the minimum ratio: not a rollback
    slightly = VersionSample(runs=20, failures=1, costs=[0.011] * 20)
    assert decide(rule, good, slightly).action == "wait"
    fine = VersionSample(runs=30, failures=2, costs=[0.01] * 30)
    assert decide(rule, good, fine).action == "promote"
    assert decide(Rule(min_runs=20), good, fine).action == "wait"


def test_rule_bad_values() -> None:
    with pytest.raises(ValueError, match="promote_after"):
        Rule(min_runs=20, promote_after=5)
    with pytest.raises(ValueError, match="alpha"):
        Rule(alpha=1.5)


def test_share_parsing_and_assignment() -> None:
    assert parse_share("10%") == pytest.approx(0.10)
    assert parse_share("50") == pytest.approx(0.5)
    for bad in ("0%", "150%", "ten", ""):
        with pytest.raises(ValueError, match="percentage"):
            parse_share(bad)
    ids = [f"dev-{i:012x}" for i in range(4000)]
    share = sum(assigned_to_canary(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [assigned_to_canary(i, 0.1) for i in ids] == [assigned_to_canary(i, 0.1) for i in ids]
    assert not any(assigned_to_canary(i, 0.0) for i in ids)


def test_checkpoints_and_the_alpha_they_spend() -> None:
    rule = Rule(min_runs=20)
    assert [checkpoint(rule, n) for n in (0, 19, 20, 39, 40, 79, 80, 160)] == [
        -1, -1, 0, 0, 1, 1, 2, 3,
    ]  # fmt: skip
    assert look_alpha(rule, 0) == pytest.approx(0.0125)
    assert look_alpha(rule, 1) == pytest.approx(0.00625)
    # spent by halves: every look of both tests together stays under alpha
    assert 2 * sum(look_alpha(rule, k) for k in range(60)) == pytest.approx(0.05)


def test_judge_looks_at_the_runs_of_its_checkpoint_only() -> None:
    rule = Rule(min_runs=10)
    # baseline: never fails; canary: the first 10 runs fail 6 times, the next 9 succeed
    baseline = [(t, False, 0.01) for t in range(0, 60, 2)]
    canary = [(t, t < 20 and t % 3 != 0, 0.01) for t in range(1, 39, 2)]
    assert len(canary) == 19
    first = judge(rule, baseline, canary)
    assert first.action == "rollback" and "over 10 runs" in first.reason
    # the same decision whatever ends later before the next checkpoint (19 runs in)
    assert judge(rule, baseline, canary[:10]).reason == first.reason
    # too few baseline runs by the checkpoint: wait
    late = [(t + 100, False, 0.01) for t in range(30)]
    assert judge(rule, late, canary).action == "wait"
    assert judge(rule, baseline, canary[:9]).action == "wait"
