"""The values a pool policy reads and the decision it returns: plain frozen data.

Times are seconds on any monotonic clock (the simulator's, or the scheduler's); a
policy never reads a clock itself, so the same observations give the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Decision",
    "Inputs",
    "Instance",
    "InstanceState",
    "Limits",
    "Observation",
    "PolicyName",
    "Recommendation",
    "Settings",
]

PolicyName = Literal["fixed", "reactive", "predictive"]
InstanceState = Literal["warming", "idle", "busy"]
Inputs = Mapping[str, float | int | str | bool | None]


@dataclass(frozen=True)
class Settings:
    """An agent's pool: ``[scale]`` in its config.toml (``scale = N`` is fixed at N)."""

    min: int = 0
    max: int = 1
    #: The utilisation (busy share of the pool) a policy sizes the pool for.
    target: float = 0.6
    #: Above this utilisation the reactive policy grows the pool ...
    scale_up: float = 0.7
    #: ... and below this one it shrinks it.
    scale_down: float = 0.2
    #: Seconds a smaller size must be the recommendation before the pool shrinks to it.
    stabilization: float = 300.0
    #: Seconds of the rolling windows the predictive policy measures rates over.
    window: float = 300.0
    #: Seconds a new instance takes to be ready: the predictive policy's lead until it
    #: has measured starts (a pool of slots, as the scheduler's, never measures any).
    startup: float = 60.0
    policy: PolicyName = "reactive"
    #: Instances to keep prepared ahead of work (read, not acted on yet).
    warm: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"need 0 <= min <= max; got {self.min}, {self.max}")
        if not 0 < self.scale_down < self.target <= self.scale_up <= 1:
            raise ValueError(
                "need 0 < scaleDown < target <= scaleUp <= 1; got "
                f"{self.scale_down}, {self.target}, {self.scale_up}"
            )

    @classmethod
    def fixed(cls, size: int) -> Settings:
        """``scale = N``: a pool of exactly N (0: the agent is disabled)."""
        return cls(min=size, max=size, policy="fixed")


@dataclass(frozen=True)
class Instance:
    id: str
    state: InstanceState
    #: When the instance was started (began warming): "oldest" orders by this.
    started_at: float


@dataclass(frozen=True)
class Limits:
    """What bounds the pool from outside the agent's own settings."""

    #: Instances this pool may hold under the project cap (the cap less other agents' runs).
    cap: int | None = None
    #: Runners' slots this pool may use, its own instances included.
    slots: int | None = None
    #: The agent's or the project's daily budget is spent: no new instances.
    budget_stop: bool = False
    #: Why the model provider cannot feed more runs now (throttled by a 429, runs already
    #: waiting for its permits, or its rate lowered), or None: no new instances.
    provider_stop: str | None = None


@dataclass(frozen=True)
class Observation:
    """The pool and its queue at ``now``, and what happened since the previous tick."""

    now: float
    queued: int
    instances: tuple[Instance, ...] = ()
    arrivals: int = 0
    completions: int = 0
    #: How long each run that ended since the previous tick took, in seconds.
    durations: tuple[float, ...] = ()
    #: How long each instance that became ready since the previous tick took to start.
    starts: tuple[float, ...] = ()
    limits: Limits = Limits()

    def count(self, state: InstanceState) -> int:
        return sum(1 for i in self.instances if i.state == state)

    @property
    def size(self) -> int:
        return len(self.instances)


@dataclass(frozen=True)
class Recommendation:
    """A policy's wish before stabilisation and bounds."""

    size: int
    reason: str
    inputs: Inputs = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What to do now: start ``add`` instances, stop the idle ones in ``remove``.

    ``desired`` is the bounded size; the pool may stay above it while busy instances
    finish (they are never stopped). ``inputs`` records everything the decision used.
    """

    now: float
    size: int
    desired: int
    add: int
    remove: tuple[str, ...]
    reason: str
    inputs: Inputs = field(default_factory=dict)
