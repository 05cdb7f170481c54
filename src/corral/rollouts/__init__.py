"""Agent changes as rollouts: the statistics and the rule that judge a canary bundle.

Pure functions, no I/O: ``stats`` has the tests (Fisher's exact test, the Mann-Whitney U
test), ``rule`` the decision a rollout's evaluator takes from the two versions' figures.
"""

from corral.rollouts.rule import (
    Decision,
    Rule,
    VersionSample,
    assigned_to_canary,
    checkpoint,
    decide,
    judge,
    look_alpha,
    parse_share,
)
from corral.rollouts.stats import fisher_greater, mann_whitney_greater, normal_sf

__all__ = [
    "Decision",
    "Rule",
    "VersionSample",
    "assigned_to_canary",
    "checkpoint",
    "decide",
    "fisher_greater",
    "judge",
    "look_alpha",
    "mann_whitney_greater",
    "normal_sf",
    "parse_share",
]
