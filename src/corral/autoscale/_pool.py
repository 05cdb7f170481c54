"""Every policy's recommendation goes through the same steps: stabilisation, bounds,
and the choice of which instances go.
"""

from __future__ import annotations

from collections import deque

from corral.autoscale._model import Decision, Instance, Limits, Observation, Settings
from corral.autoscale._policies import Policy, make_policy

__all__ = ["Autoscaler", "bound", "ceiling", "removable"]


def ceiling(settings: Settings, limits: Limits, size: int) -> int:
    """The largest size allowed now: max, the project cap, the fleet's slots, and no
    growth past ``size`` once the budget is spent or the model provider is saturated."""
    high = settings.max
    for limit in (limits.cap, limits.slots):
        if limit is not None:
            high = min(high, max(limit, 0))
    if limits.budget_stop or limits.provider_stop is not None:
        high = min(high, size)
    return high


def bound(settings: Settings, limits: Limits, size: int, wanted: int) -> int:
    """``wanted`` within [min, ceiling]; where a limit is below min, the limit wins."""
    high = ceiling(settings, limits, size)
    return max(min(settings.min, high), min(high, wanted))


def removable(instances: tuple[Instance, ...], count: int) -> tuple[str, ...]:
    """Up to ``count`` idle instances, oldest first; busy and warming ones never go."""
    idle = sorted((i for i in instances if i.state == "idle"), key=lambda i: (i.started_at, i.id))
    return tuple(i.id for i in idle[: max(count, 0)])


class Autoscaler:
    """One agent's pool controller: ``decide(observation)`` once a tick.

    Deterministic: the decisions depend only on the settings and the observations
    given, in order. A smaller size is taken only when every recommendation of the last
    ``stabilization`` seconds was that small or smaller (as Kubernetes' HPA does).
    """

    def __init__(self, settings: Settings, policy: Policy | None = None) -> None:
        self.settings = settings
        self.policy = policy if policy is not None else make_policy(settings)
        self._recent: deque[tuple[float, int]] = deque()

    def decide(self, observation: Observation) -> Decision:
        now, size = observation.now, observation.size
        wish = self.policy.recommend(observation)
        while self._recent and self._recent[0][0] <= now - self.settings.stabilization:
            self._recent.popleft()
        self._recent.append((now, wish.size))  # kept even with no stabilisation window
        stable = wish.size
        if wish.size < size:
            stable = min(size, max(s for _, s in self._recent))
        desired = bound(self.settings, observation.limits, size, stable)
        remove = removable(observation.instances, size - desired) if desired < size else ()
        reason = wish.reason
        if stable != wish.size:
            reason += f"; held at {stable} by the {self.settings.stabilization:g}s stabilisation"
        if desired != stable:
            reason += f"; bounded to {desired}"
            if observation.limits.provider_stop is not None and desired < stable:
                reason += f" (provider: {observation.limits.provider_stop})"
        inputs = {
            **wish.inputs,
            "queued": observation.queued,
            "busy": observation.count("busy"),
            "idle": observation.count("idle"),
            "warming": observation.count("warming"),
            "recommended": wish.size,
            "stabilized": stable,
            "ceiling": ceiling(self.settings, observation.limits, size),
            "min": self.settings.min,
            "cap": observation.limits.cap,
            "slots": observation.limits.slots,
            "budget_stop": observation.limits.budget_stop,
        }
        if observation.limits.provider_stop is not None:
            inputs["provider_stop"] = observation.limits.provider_stop
        return Decision(
            now=now,
            size=size,
            desired=desired,
            add=max(desired - size, 0),
            remove=remove,
            reason=reason,
            inputs=inputs,
        )
