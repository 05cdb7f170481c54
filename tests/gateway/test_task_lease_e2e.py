"""A claim's lease end to end on both stores: ``task-claim --lease`` and the agent's
``taskLease`` set it, ``task-heartbeat`` extends the claim by that same lease, and a
lease out of bounds is refused with a message saying the bounds."""

from __future__ import annotations

import json
from pathlib import Path

from corral.agentcmd.client import EXIT_BAD_REQUEST
from corral.store import Store
from corral.tasks._model import Task, TaskSpec
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import wait_for

SCRIPT = (
    'task-claim --project web --label a > "$OUT/a.json"; '
    'task-heartbeat a > "$OUT/a-beat.json"; '
    'task-claim --project web --label b --lease 45 > "$OUT/b.json"; '
    'task-heartbeat b > "$OUT/b-beat.json"; '
    'task-claim --project web --label c --lease 5 > "$OUT/c.json"; echo $? > "$OUT/c.code"; '
    'task-claim --project web --label c --lease 86401 > "$OUT/c2.json"; echo $? > "$OUT/c2.code"'
)


def span(task: Task) -> float:
    assert task.expires_at is not None and task.heartbeat_at is not None
    return round(task.expires_at - task.heartbeat_at, 3)


async def test_lease_from_the_command_or_the_agent_and_kept_by_heartbeats(
    tmp_path: Path, store: Store
) -> None:
    await store.add_tasks(
        [TaskSpec(id=t, project="web", title=t, labels=(t,)) for t in ("a", "b", "c")]
    )
    agents = {"dev": {"taskLease": 120, "command": SCRIPT + "; sleep 30"}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("dev")
        await wait_for(lambda: f.out("c2.code").exists(), timeout=30)
        a = await store.get_task("web", "a")
        b = await store.get_task("web", "b")
        c = await store.get_task("web", "c")
        assert a is not None and b is not None and c is not None
        assert span(a) == 120.0  # the agent's taskLease, kept by the heartbeat
        assert span(b) == 45.0  # --lease 45, kept by the heartbeat
        assert c.status.value == "open"
        for name in ("a-beat", "b-beat"):
            assert json.loads(f.out(f"{name}.json").read_text())["ok"] is True
        for name in ("c", "c2"):
            assert f.out(f"{name}.code").read_text().strip() == str(EXIT_BAD_REQUEST)
            refused = json.loads(f.out(f"{name}.json").read_text())
            assert refused["ok"] is False
            assert "out of bounds" in refused["error"] and "10 to 86400 seconds" in refused["error"]
        (run,) = await store.list_runs(agent="dev")
        await store.request_kill(run.id)
        await f.finished("dev", 1)
