"""Canary rollouts of bundles on the control plane: assigning runs, judging the canary.

* ``assign``: after a claim, the runs of the rollout's agents whose id hashes under the
  share (``corral.rollouts.assigned_to_canary``) are moved to the candidate bundle in one
  statement that assigns nothing once the rollout has ended. The same for the control
  plane's own claims and for the runs it hands to runners (which fetch by hash).
* ``compare``: each version's figures since the rollout began: runs, success rate,
  duration p50, tokens and cost per run, ``al-status`` / ``al-return`` outcomes, and the
  four numbers (live runs, throughput per hour, anomalies, the runners running it).
* ``evaluate``: the rule (``corral.rollouts.rule``) on the finished runs; rollback or
  promotion is ``Store.end_rollout``, one statement that only one evaluator wins, so every
  scheduler on the store may evaluate on its tick.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from corral.errors import StoreError
from corral.rollouts import Decision, Rule, assigned_to_canary, judge
from corral.store import Rollout, Store
from corral.store._core import Row
from corral.store.records import Claim

__all__ = ["assign", "compare", "evaluate"]

log = logging.getLogger("corral.rollouts")

_TERMINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}
#: Ends that count as failures. A killed run was stopped by someone: not the version's
#: doing, so it counts in neither column.
_FAILED = {"failed", "timed_out", "lost"}


async def assign(store: Store, rollout: Rollout | None, claims: Sequence[Claim]) -> list[Claim]:
    """``claims`` with the canary's runs moved to the candidate bundle.

    The claims are committed already: when the assignment cannot be written (the store
    failed), they are returned unchanged and run the baseline, rather than the error
    leaving claimed runs unlaunched until their leases lapse."""
    if rollout is None or not rollout.running or not claims:
        return list(claims)
    agents = set(rollout.agents)
    chosen = [
        c.run.id
        for c in claims
        if c.run.agent in agents and assigned_to_canary(c.run.id, rollout.share)
    ]
    if not chosen:
        return list(claims)
    try:
        moved = await store.assign_canary(rollout.id, chosen)
    except StoreError:
        log.exception(
            "could not assign %d run(s) to rollout %d's canary; they run the baseline",
            len(chosen),
            rollout.id,
            extra={"action": "rollout_assign_failed", "rollout": rollout.id},
        )
        return list(claims)
    return [
        Claim(c.item, c.run.evolve(bundle=rollout.candidate)) if c.run.id in moved else c
        for c in claims
    ]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _version(
    store: Store, rows: list[Row], anomalies: Sequence[Row], now: datetime, since: datetime
) -> dict[str, Any]:
    ended = [r for r in rows if r["state"] in _TERMINAL and r["state"] != "killed"]
    failed = sum(1 for r in ended if r["state"] in _FAILED)
    durations = [
        d
        for r in ended
        if (d := _seconds(_time(store, r["started_at"]), _time(store, r["ended_at"]))) is not None
    ]
    costs = [float(r["cost_usd"] or 0.0) for r in ended]
    ends = [
        (_time(store, r["ended_at"]) or since, r["state"] in _FAILED, float(r["cost_usd"] or 0.0))
        for r in ended
    ]
    tokens = [
        sum(
            int(r[k] or 0)
            for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        )
        for r in ended
    ]
    statuses = Counter(str(r["status_text"]) for r in ended if r["status_text"])
    returns = Counter(str(r["return_value"])[:80] for r in ended if r["return_value"])
    ids = {str(r["id"]) for r in rows}
    seen = sum(1 for a in anomalies if any(i in str(a["evidence"] or "") for i in ids))
    live = [r for r in rows if r["state"] in ("starting", "running")]
    hours = max((now - since).total_seconds() / 3600, 1 / 3600)
    return {
        "runs": len(ended),
        "failures": failed,
        "successRate": (len(ended) - failed) / len(ended) if ended else None,
        "durationP50": statistics.median(durations) if durations else None,
        "tokensPerRun": sum(tokens) / len(tokens) if tokens else None,
        "costPerRun": sum(costs) / len(costs) if costs else None,
        "statuses": dict(statuses.most_common(5)),
        "returns": dict(returns.most_common(5)),
        "live": len(live),
        "throughputPerHour": len(ended) / hours,
        "anomalies": seen,
        "runners": sorted({str(r["runner_id"]) for r in live if r["runner_id"]}),
        "_ends": ends,
    }


def _time(store: Store, value: Any) -> datetime | None:
    return None if value is None else store.decode_time(value)


async def compare(store: Store, rollout: Rollout) -> dict[str, Any]:
    """Both versions' figures since ``rollout`` began, and what the rule says now."""
    rows = await store.rollout_runs(rollout)
    anomalies = await store.anomalies_since(rollout.created_at)
    now = rollout.ended_at or store.now()
    versions = {
        name: _version(
            store, [r for r in rows if r["bundle"] == bundle], anomalies, now, rollout.created_at
        )
        for name, bundle in (("baseline", rollout.baseline), ("canary", rollout.candidate))
    }
    decision = _decide(rollout, versions)
    for figures in versions.values():
        figures.pop("_ends")
    live = versions["baseline"]["live"] + versions["canary"]["live"]
    return {
        "rollout": rollout.to_json(),
        "versions": versions,
        # version skew: the share of live runs on the canary, against the share asked
        "skew": {"canaryLive": versions["canary"]["live"], "live": live},
        "decision": {
            "action": decision.action,
            "reason": decision.reason,
            "failureP": decision.failure_p,
            "costP": decision.cost_p,
        },
    }


def _decide(rollout: Rollout, versions: dict[str, dict[str, Any]]) -> Decision:
    rule = Rule.from_json(rollout.rule)
    return judge(rule, versions["baseline"]["_ends"], versions["canary"]["_ends"])


async def evaluate(store: Store, *, actor: str) -> Rollout | None:
    """Judge the running rollout, if there is one; the rollout when this call ended it."""
    rollout = await store.running_rollout()
    if rollout is None:
        return None
    figures = await compare(store, rollout)
    decision = figures["decision"]
    if decision["action"] == "wait":
        return None
    state = "promoted" if decision["action"] == "promote" else "rolled_back"
    ended = await store.end_rollout(rollout.id, state, actor=actor, reason=decision["reason"])
    if ended is not None:
        log.warning(
            "rollout %d of %s %s: %s",
            rollout.id,
            rollout.candidate,
            ended.state.replace("_", " "),
            ended.reason,
            extra={"action": f"rollout_{ended.state}", "rollout": rollout.id},
        )
    return ended


async def status(store: Store, agent: str | None = None, *, limit: int = 5) -> dict[str, Any]:
    """The running rollout and the last ones (``agent``: only those that touch it), each
    with both versions' figures."""
    found = await store.list_rollouts(limit=max(limit * 4, 20))
    if agent is not None:
        found = [r for r in found if agent in r.agents]
    shown = [await compare(store, r) for r in found[:limit]]
    running = next((s for s in shown if s["rollout"]["state"] == "running"), None)
    return {"running": running, "rollouts": shown}


async def end_by_hand(store: Store, ref: int | None, state: str, *, actor: str) -> Rollout:
    """Promote or roll back rollout ``ref`` (None: the running one) by an operator's word;
    LookupError with what to do when there is nothing to end."""
    rollout = await store.running_rollout() if ref is None else await store.get_rollout(ref)
    if rollout is None:
        raise LookupError(
            "no rollout is running (`corral push --canary 10%` starts one)"
            if ref is None
            else f"no rollout {ref} (`corral rollout status` lists them)"
        )
    if not rollout.running:
        raise LookupError(
            f"rollout {rollout.id} has ended already ({rollout.state.replace('_', ' ')})"
        )
    verb = "promoted" if state == "promoted" else "rolled back"
    ended = await store.end_rollout(rollout.id, state, actor=actor, reason=f"{verb} by hand")
    if ended is None:
        raise LookupError(f"rollout {rollout.id} ended meanwhile (`corral rollout status`)")
    return ended
