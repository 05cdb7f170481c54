"""Runs on the fleet's runners: what a runner's heartbeat renews, and which of the runs a
runner reports are no longer its own.

A run on a runner is a claim like any other: its item's lease is owned by the runner
(``lease_owner`` = the runner's id) and renewed by the runner's heartbeat, one statement
for all of its runs. A runner that stops heartbeating lets its leases lapse, and the
control plane's recovery records its runs lost and queues their items again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from corral.store._leases import LeaseOps

__all__ = ["FleetRunOps", "Holding", "Renewal"]


@dataclass(frozen=True, slots=True)
class Holding:
    """A run a runner holds now: its item is claimed by the runner with ``fence``."""

    run_id: str
    item_id: int
    fence: int


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a runner's heartbeat renewal answers: the reported runs it no longer holds
    (``gone``) and those of its held runs an operator asked to kill (``kill``)."""

    gone: tuple[str, ...]
    kill: tuple[str, ...]


class FleetRunOps(LeaseOps):
    """A runner's runs; part of ``Store``."""

    async def runner_holdings(self, runner_id: str) -> dict[str, Holding]:
        """The runs ``runner_id`` holds now (claimed, lapsed or not, not yet recovered),
        by run id."""
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("runner_holdings", {"owner": runner_id})
        return {
            str(row["run_id"]): Holding(str(row["run_id"]), int(row["id"]), int(row["fence"]))
            for row in rows
            if row["run_id"] is not None and row["fence"] is not None
        }

    async def renew_runner_runs(
        self, runner_id: str, running: Mapping[str, int], *, lease_seconds: float
    ) -> Renewal:
        """A runner's heartbeat: renew the leases of the runs it reports (``running``:
        run id -> fence) that it still holds with that fence and that have not lapsed,
        in one statement without the project row (recovery takes lapsed leases only, and
        re-checks their expiry under its row locks). Answers the reported runs it no
        longer holds (lapsed, recovered, killed, finished elsewhere: the runner stops
        them) and those of its runs an operator asked to kill."""
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        if not running:
            return Renewal((), ())
        now = self.now()
        params = {
            "owner": runner_id,
            "now": self.encode_time(now),
            "expires_at": self.encode_time(now + timedelta(seconds=lease_seconds)),
            "run_ids": self.encode_list(sorted(running)),
            "held": self.encode_list(sorted(f"{run}:{fence}" for run, fence in running.items())),
        }
        rows = await self.statement("renew_runner_leases", params)
        live = {str(row["run_id"]) for row in rows}
        kill = sorted(str(row["run_id"]) for row in rows if row["kill"])
        return Renewal(tuple(sorted(run for run in running if run not in live)), tuple(kill))

    async def runner_holds(self, runner_id: str, run_id: str, fence: int | None) -> bool:
        """True when ``runner_id`` holds run ``run_id`` now (with ``fence``, if given)."""
        held = await self.runner_holdings(runner_id)
        return _holds(held, run_id, fence)


def _holds(held: Mapping[str, Holding], run_id: str, fence: int | None) -> bool:
    holding = held.get(run_id)
    return holding is not None and (fence is None or holding.fence == fence)
