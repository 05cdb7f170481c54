"""PostgreSQL: a batch claim waits for an agent row another transaction holds for a
moment (a run's end updating its counters, an intake), instead of skipping the agent.

Skipping it (``FOR UPDATE SKIP LOCKED`` on the agent rows, as claims did) made a claim
come back empty whenever any run of that agent was being finalised: with one busy agent,
44 % of a dispatcher's claims returned nothing while work was queued (one process), 72 %
with two; each then waited for the next wake-up. Claims now lock the agent rows they
chose in name order (so two claims never wait on each other in a cycle), and hold them
for one statement.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from corral.store import AgentSpec, ItemState, NewItem, RunState, Store, TriggerKind

pytestmark = pytest.mark.parametrize(
    "dialect", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


async def test_a_claim_waits_for_a_run_of_its_agent_being_ended(
    store: Store, store_url: str
) -> None:
    await store.sync_project(
        [AgentSpec("a", 2, 10), AgentSpec("b", 2, 10)],
        scale_cap=None,
        max_attempts=2,
        max_reruns=0,
    )
    first = (await store.enqueue(NewItem("a", TriggerKind.MANUAL))).item
    [running] = await store.claim("s1", lease_seconds=60, limit=1)
    second = (await store.enqueue(NewItem("a", TriggerKind.MANUAL))).item
    async with await psycopg.AsyncConnection.connect(store_url) as ending:
        # What a finalise of ``running`` holds until it commits: the agent's row.
        await ending.execute("SELECT * FROM corral_agents WHERE agent = 'a' FOR NO KEY UPDATE")
        claiming = asyncio.create_task(store.claim("s2", lease_seconds=60, limit=8))
        await asyncio.sleep(0.3)
        assert not claiming.done()  # waiting, not answered "nothing to claim"
        await ending.commit()
        claims = await asyncio.wait_for(claiming, 10)
    assert [c.item.id for c in claims] == [second.id]
    assert running.item.id == first.id
    done = await store.finalize(
        running.run.id, fence=running.run.fence or 0, state=RunState.SUCCEEDED, exit_code=0
    )
    assert done.item.state is ItemState.DONE
    assert [s.active for s in await store.agent_states() if s.agent == "a"] == [1]
