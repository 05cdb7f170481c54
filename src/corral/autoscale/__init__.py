"""corral.autoscale: pool policies for an agent's instances, as pure code.

A policy reads an :class:`Observation` (the queue, the instances, what arrived and
ended since the last tick) and the :class:`Autoscaler` turns its recommendation into a
:class:`Decision` within the pool's bounds. Nothing here reads a clock or the store, so
the trace simulator (bench/autoscale.py) runs the same code the scheduler will.

scaler = Autoscaler(settings_for(agent.config.scale))
decision = scaler.decide(Observation(now=t, queued=3, instances=...))
"""

from corral.autoscale._config import settings_for
from corral.autoscale._model import (
    Decision,
    Instance,
    InstanceState,
    Limits,
    Observation,
    PolicyName,
    Recommendation,
    Settings,
)
from corral.autoscale._policies import Fixed, Policy, Predictive, Reactive, make_policy
from corral.autoscale._pool import Autoscaler, bound, ceiling, removable

__all__ = [
    "Autoscaler",
    "Decision",
    "Fixed",
    "Instance",
    "InstanceState",
    "Limits",
    "Observation",
    "Policy",
    "PolicyName",
    "Predictive",
    "Reactive",
    "Recommendation",
    "Settings",
    "bound",
    "ceiling",
    "make_policy",
    "removable",
    "settings_for",
]
