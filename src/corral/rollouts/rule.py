"""The rule that ends a rollout: roll back a canary that is significantly worse, promote
one that ran long enough without being so.

After ``min_runs`` finished canary runs (and at least ``min_runs`` finished baseline runs
to compare with; fewer baseline runs and the rule waits), the canary is rolled back when

* its failure rate is higher than the baseline's, one-sided Fisher exact p < ``alpha``,
  by at least ``min_failure_increase`` (absolute: 0.10 = ten points); or
* its cost per run is higher, one-sided Mann-Whitney U p < ``alpha``, with a mean cost at
  least ``min_cost_ratio`` times the baseline's (and runs that cost anything at all).

Otherwise, with ``promote_after`` set, it is promoted once that many canary runs have
finished. Each test runs at ``alpha`` (two tests: the chance of a false rollback of an
equal canary is at most about 2 * alpha at one evaluation; the minimum effects keep
repeated looks from rolling back a canary that is equal in practice).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

from corral.rollouts.stats import fisher_greater, mann_whitney_greater

__all__ = ["Decision", "Rule", "VersionSample", "assigned_to_canary", "decide", "parse_share"]


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


def decide(rule: Rule, baseline: VersionSample, canary: VersionSample) -> Decision:
    """What the rollout does now; ``reason`` says why in a sentence."""
    if canary.runs < rule.min_runs:
        return Decision("wait", f"{canary.runs} of {rule.min_runs} canary runs finished")
    if baseline.runs < rule.min_runs:
        return Decision("wait", f"{baseline.runs} of {rule.min_runs} baseline runs finished")
    failure_p = fisher_greater(canary.failures, canary.runs, baseline.failures, baseline.runs)
    _, cost_p = mann_whitney_greater(list(canary.costs), list(baseline.costs))
    increase = canary.failure_rate - baseline.failure_rate
    if failure_p < rule.alpha and increase >= rule.min_failure_increase:
        return Decision(
            "rollback",
            f"failure rate {canary.failure_rate:.0%} against {baseline.failure_rate:.0%} "
            f"(Fisher exact, one-sided p = {failure_p:.4f} < {rule.alpha})",
            failure_p,
            cost_p,
        )
    ratio = (
        canary.mean_cost / baseline.mean_cost
        if baseline.mean_cost > 0
        else (float("inf") if canary.mean_cost > 0 else 1.0)
    )
    if cost_p < rule.alpha and ratio >= rule.min_cost_ratio:
        return Decision(
            "rollback",
            f"cost per run ${canary.mean_cost:.4f} against ${baseline.mean_cost:.4f} "
            f"({ratio:.2f}x; Mann-Whitney U, one-sided p = {cost_p:.4f} < {rule.alpha})",
            failure_p,
            cost_p,
        )
    if rule.promote_after is not None and canary.runs >= rule.promote_after:
        return Decision(
            "promote",
            f"{canary.runs} canary runs without a significant regression "
            f"(failures p = {failure_p:.3f}, cost p = {cost_p:.3f})",
            failure_p,
            cost_p,
        )
    return Decision("wait", "no significant regression so far", failure_p, cost_p)


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
