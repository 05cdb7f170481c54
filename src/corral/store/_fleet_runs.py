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

from corral.store._leases import LeaseOps

__all__ = ["FleetRunOps", "Holding"]


@dataclass(frozen=True, slots=True)
class Holding:
    """A run a runner holds now: its item is claimed by the runner with ``fence``."""

    run_id: str
    item_id: int
    fence: int


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
    ) -> list[str]:
        """A runner's heartbeat: renew the leases of the runs it reports (``running``:
        run id -> fence) that it still holds with that fence, in one statement; answer
        the reported runs it no longer holds (lapsed and recovered, killed, finished
        elsewhere): the runner stops them."""
        held = await self.runner_holdings(runner_id)
        live = [run for run, fence in running.items() if _holds(held, run, fence)]
        if live:
            await self.renew_leases(runner_id, lease_seconds=lease_seconds, run_ids=live)
        return sorted(run for run in running if run not in live)

    async def runner_holds(self, runner_id: str, run_id: str, fence: int | None) -> bool:
        """True when ``runner_id`` holds run ``run_id`` now (with ``fence``, if given)."""
        held = await self.runner_holdings(runner_id)
        return _holds(held, run_id, fence)


def _holds(held: Mapping[str, Holding], run_id: str, fence: int | None) -> bool:
    holding = held.get(run_id)
    return holding is not None and (fence is None or holding.fence == fence)
