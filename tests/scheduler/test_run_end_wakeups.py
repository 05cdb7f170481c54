"""A run's end no longer wakes every waiter of the process (D107): 1,000 runs waiting for
keys of their own are not each woken by every run that ends elsewhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from corral.credentials import CredentialStore
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.executor import RunExecutor
from corral.store import RunState, Store
from corral.store._notify import RUN_ENDED, call_topic, lock_topic
from tests.scheduler.test_executor import claim, make_project

RUNS = 5


async def test_run_ends_wake_the_feed_and_not_the_waiters_of_other_topics(
    tmp_path: Path, store: Store
) -> None:
    project = make_project(tmp_path, "true")
    link = AgentLink("http://127.0.0.1:1", changes=store.changes)
    creds = CredentialStore(tmp_path / "home" / "credentials")
    executor = RunExecutor(project, store, link=link, credentials=creds)
    woken: Counter[str] = Counter()
    topics = [lock_topic("db://someone-elses"), call_topic("999999"), RUN_ENDED]
    for topic in topics:
        store.changes.subscribe(topic, lambda topic=topic: woken.update([topic]))

    for _ in range(RUNS):
        run = (await executor.execute(await claim(store, project))).run
        assert run.state is RunState.SUCCEEDED, run.error

    assert woken[RUN_ENDED] == RUNS  # the dashboard's feed hears of each end
    assert woken[lock_topic("db://someone-elses")] == 0
    assert woken[call_topic("999999")] == 0
