"""The rule that ends a rollout: roll back a canary that is significantly worse, promote
one that ran long enough without being so.

The rule looks at the canary at checkpoints: after ``min_runs`` finished canary runs, then
2, 4, 8... times as many. At checkpoint k (n_k = min_runs * 2**k canary runs) it judges
the first n_k canary runs to end and the baseline runs that ended before the last of
them, so however often the evaluator looks, each checkpoint is judged once, on the same
runs. With fewer than ``min_runs`` baseline runs there it waits. The canary is rolled
back when

* its failure rate is higher than the baseline's, one-sided Fisher exact p < alpha_k,
  by at least ``min_failure_increase`` (absolute: 0.10 = ten points); or
* its cost per run is higher, one-sided Mann-Whitney U p < alpha_k, with a mean cost at
  least ``min_cost_ratio`` times the baseline's.

alpha_k = ``alpha`` / 2**(k + 2) per test: over every checkpoint and both tests the
chance of rolling back a canary no worse than the baseline is at most ``alpha`` (a union
bound: alpha spent by halves, so repeated looks do not inflate it). Otherwise, with
``promote_after`` set, it is promoted once that many canary runs have finished and the
last checkpoint showed no regression.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from corral.rollouts.stats import fisher_greater, mann_whitney_greater

__all__ = [
    "Decision",
    "End",
    "Rule",
    "VersionSample",
    "assigned_to_canary",
    "checkpoint",
    "decide",
    "judge",
    "look_alpha",
    "parse_share",
]


@dataclasses.dataclass(frozen=True)
class Rule:
    min_runs: int = 20
    promote_after: int | None = None
    alpha: float = 0.05
    min_failure_increase: float = 0.10
    min_cost_ratio: float = 1.2

    def __post_init__(self) -> None:
        if self.min_runs < 1:
            raise ValueError(f"min_runs must be >= 1, got {self.min_runs}")
        if self.promote_after is not None and self.promote_after < self.min_runs:
            raise ValueError(
                f"promote_after ({self.promote_after}) must be >= min_runs ({self.min_runs})"
            )
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")

    def to_json(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> Rule:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in fields})  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class VersionSample:
    """The finished runs of one version: how many failed, and each one's cost."""

    runs: int
    failures: int
    costs: Sequence[float] = ()

    @property
    def failure_rate(self) -> float:
        return self.failures / self.runs if self.runs else 0.0

    @property
    def mean_cost(self) -> float:
        return sum(self.costs) / len(self.costs) if self.costs else 0.0


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Literal["wait", "promote", "rollback"]
    reason: str
    failure_p: float = 1.0
    cost_p: float = 1.0


#: A finished run, for ``judge``: when it ended (any ordered value), whether it
#: failed, what it cost.
End = tuple[Any, bool, float]


def checkpoint(rule: Rule, canary_runs: int) -> int:
    """The last checkpoint reached with ``canary_runs`` (-1: none yet)."""
    if canary_runs < rule.min_runs:
        return -1
    look = 0
    while rule.min_runs * 2 ** (look + 1) <= canary_runs:
        look += 1
    return look


def look_alpha(rule: Rule, look: int) -> float:
    """The level of each test at checkpoint ``look``: alpha spent by halves."""
    return math.ldexp(rule.alpha, -(look + 2))


def judge(rule: Rule, baseline: Sequence[End], canary: Sequence[End]) -> Decision:
    """The decision at the last checkpoint the canary reached, on the runs that had
    ended by then (``End``: ended, failed, cost)."""
    look = checkpoint(rule, len(canary))
    if look < 0:
        return Decision("wait", f"{len(canary)} of {rule.min_runs} canary runs finished")
    n = rule.min_runs * 2**look
    ends = sorted(canary, key=lambda e: e[0])[:n]
    cut = ends[-1][0]
    before = [e for e in baseline if e[0] <= cut]
    return decide(
        rule,
        VersionSample(len(before), sum(e[1] for e in before), [e[2] for e in before]),
        VersionSample(n, sum(e[1] for e in ends), [e[2] for e in ends]),
        look=look,
        finished=len(canary),
    )


def decide(
    rule: Rule,
    baseline: VersionSample,
    canary: VersionSample,
    *,
    look: int = 0,
    finished: int | None = None,
) -> Decision:
    """The decision at checkpoint ``look`` on these samples (``finished``: the canary's
    finished runs by now, for promotion; its sample's by default); ``reason`` says why."""
    if canary.runs < rule.min_runs:
        return Decision("wait", f"{canary.runs} of {rule.min_runs} canary runs finished")
    if baseline.runs < rule.min_runs:
        return Decision("wait", f"{baseline.runs} of {rule.min_runs} baseline runs finished")
    alpha = look_alpha(rule, look)
    finished = canary.runs if finished is None else finished
    failure_p = fisher_greater(canary.failures, canary.runs, baseline.failures, baseline.runs)
    _, cost_p = mann_whitney_greater(list(canary.costs), list(baseline.costs))
    increase = canary.failure_rate - baseline.failure_rate
    if failure_p < alpha and increase >= rule.min_failure_increase:
        return Decision(
            "rollback",
            f"failure rate {canary.failure_rate:.0%} against {baseline.failure_rate:.0%} "
            f"over {canary.runs} runs (Fisher exact, one-sided p = {failure_p:.2g} < "
            f"{alpha:.3g})",
            failure_p,
            cost_p,
        )
    ratio = (
        canary.mean_cost / baseline.mean_cost
        if baseline.mean_cost > 0
        else (float("inf") if canary.mean_cost > 0 else 1.0)
    )
    if cost_p < alpha and ratio >= rule.min_cost_ratio:
        return Decision(
            "rollback",
            f"cost per run ${canary.mean_cost:.4f} against ${baseline.mean_cost:.4f} "
            f"({ratio:.2f}x over {canary.runs} runs; Mann-Whitney U, one-sided "
            f"p = {cost_p:.2g} < {alpha:.3g})",
            failure_p,
            cost_p,
        )
    if rule.promote_after is not None and finished >= rule.promote_after:
        return Decision(
            "promote",
            f"{finished} canary runs without a significant regression "
            f"(failures p = {failure_p:.3f}, cost p = {cost_p:.3f})",
            failure_p,
            cost_p,
        )
    return Decision(
        "wait",
        f"no significant regression at {canary.runs} canary runs (next look at {canary.runs * 2})",
        failure_p,
        cost_p,
    )


_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


def parse_share(text: str) -> float:
    """``10%`` or ``10`` -> 0.10; ValueError naming the accepted forms otherwise."""
    match = _SHARE.match(text)
    value = float(match.group(1)) if match else -1.0
    if not 0 < value <= 100:
        raise ValueError(
            f"a canary share is a percentage above 0 and at most 100 (like 10%), got {text!r}"
        )
    return value / 100


def assigned_to_canary(run_id: str, share: float) -> bool:
    """Whether run ``run_id`` runs the canary: its id hashed to [0, 1) against ``share``.
    The same on every control plane and for every runner's claim."""
    import hashlib

    digest = hashlib.sha256(run_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
