"""A prompt rollout against a real `corral start`: an agent whose failure rate is a file
of its bundle. A canary that fails more is rolled back by the evaluator after enough
runs (new runs then run the baseline only); a good one is promoted by its rule."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from corral.store import NewItem, Rollout, Run, TriggerKind, open_store
from tests.bundles.test_push_process import corral
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess, wait_until

#: Prints the bundle's failure rate and fails with that probability.
FLAKY = (
    'cat "$CORRAL_AGENT_DIR/fail_rate"; python3 -c "import random, sys; '
    'sys.exit(random.random() < float(open(sys.argv[1]).read()))" '
    '"$CORRAL_AGENT_DIR/fail_rate"'
)


def version(root: Path, fail_rate: float, words: str) -> None:
    write_project(root, {"dev": {"command": FLAKY, "scale": 4}})
    folder = root / "agents" / "dev"
    (folder / "fail_rate").write_text(f"{fail_rate}\n")
    (folder / "SKILL.md").write_text(f"---\nname: dev\n---\n{words}\n")


async def _enqueue(url: str, count: int) -> list[int]:
    async with await open_store(url) as store:
        return [
            (await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))).item.id
            for _ in range(count)
        ]


async def _runs(url: str, items: list[int]) -> list[Run]:
    async with await open_store(url) as store:
        wanted = set(items)
        return [r for r in await store.list_runs(limit=5000) if r.item_id in wanted]


async def _rollout(url: str, rollout_id: int) -> Rollout:
    async with await open_store(url) as store:
        found = await store.get_rollout(rollout_id)
    assert found is not None
    return found


async def _head(url: str) -> str | None:
    async with await open_store(url) as store:
        head = await store.bundle_head()
    return None if head is None else head.hash


def run_until_ended(url: str, rollout_id: int, *, most: int = 120) -> tuple[Rollout, list[Run]]:
    """Enqueue runs of dev, ten at a time, until the rollout ends (at most ``most``)."""
    items: list[int] = []
    deadline = time.monotonic() + 100
    while time.monotonic() < deadline:
        rollout = asyncio.run(_rollout(url, rollout_id))
        if not rollout.running:
            return rollout, asyncio.run(_runs(url, items))
        runs = asyncio.run(_runs(url, items))
        if len(items) < most and sum(not r.state.is_terminal for r in runs) < 8:
            items += asyncio.run(_enqueue(url, 10))
        time.sleep(0.5)
    raise AssertionError(f"rollout {rollout_id} still running after {len(items)} runs")


def finished_runs(url: str, count: int) -> list[Run]:
    items = asyncio.run(_enqueue(url, count))

    def done() -> list[Run] | None:
        runs = asyncio.run(_runs(url, items))
        return runs if len(runs) == count and all(r.state.is_terminal for r in runs) else None

    wait_until(done, 60)
    result = done()
    assert result is not None
    return result


@pytest.mark.slow
def test_a_bad_canary_is_rolled_back_and_a_good_one_promoted(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "p"
    version(root, 0.0, "version one")
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
        pushed = corral(root, store_url, "push", "--json")
        assert pushed.returncode == 0, pushed.stderr
        baseline = json.loads(pushed.stdout)["bundle"]["hash"]
        wait_until(lambda: f"running bundle {baseline}" in scheduler.output(), 30)

        # Bad input is refused with what to do.
        refused = corral(root, store_url, "push", "--canary", "150%")
        assert refused.returncode != 0 and "percentage" in refused.stderr
        same = corral(root, store_url, "push", "--canary", "10%")
        assert same.returncode != 0 and "changes no agent" in same.stderr

        # A bad canary: fails 80% of its runs against none of the baseline's.
        version(root, 0.8, "version two, worse")
        started = corral(root, store_url, "push", "--canary", "50%", "--min-runs", "8", "--json")
        assert started.returncode == 0, started.stderr
        bad = json.loads(started.stdout)["rollout"]
        assert bad["agents"] == ["dev"] and bad["baseline"] == baseline
        wait_until(lambda: "rollout 1: 50% of the runs of dev" in scheduler.output(), 30)
        ended, runs = run_until_ended(store_url, bad["id"])
        assert ended.state == "rolled_back", ended
        assert ended.ended_by is not None and ended.ended_by.startswith("scheduler ")
        assert "Fisher exact" in (ended.reason or "")
        canary = [r for r in runs if r.bundle == bad["candidate"]]
        base = [r for r in runs if r.bundle == baseline]
        assert len(canary) >= 8 and len(base) >= 8 and len(canary) + len(base) == len(runs)
        # runs in flight when it ended finish later; every ended baseline run succeeded
        assert all(r.state.value == "succeeded" for r in base if r.state.is_terminal)
        assert sum(r.state.value == "failed" for r in canary) >= 4
        log = (root / ".corral" / "logs" / f"{canary[0].id}.log").read_text()
        assert "0.8" in log  # the canary ran the candidate bundle's files
        assert asyncio.run(_head(store_url)) == baseline
        # After the rollback new runs run the baseline only (the assignment itself finds
        # the rollout ended, whatever the follower last read).
        after = finished_runs(store_url, 12)
        assert {r.bundle for r in after} == {baseline}
        status = corral(root, store_url, "rollout", "status", "dev", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)["rollouts"][0]
        assert shown["rollout"]["state"] == "rolled_back"
        versions = shown["versions"]
        assert versions["canary"]["runs"] >= len([r for r in canary if r.state.is_terminal])
        assert versions["baseline"]["successRate"] == 1.0
        assert versions["canary"]["successRate"] < 0.6
        assert versions["canary"]["durationP50"] is not None
        text = corral(root, store_url, "rollout", "status")
        assert "rolled back" in text.stdout and "Fisher exact" in text.stdout

        # A good canary: promoted by its rule, and made the current bundle.
        version(root, 0.0, "version three, better")
        started = corral(
            root, store_url, "push", "--canary", "50%", "--min-runs", "8",
            "--promote-after", "10", "--json",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        good = json.loads(started.stdout)["rollout"]
        again = corral(root, store_url, "push", "--canary", "10%")
        assert again.returncode != 0 and "is running" in again.stderr
        ended, runs = run_until_ended(store_url, good["id"])
        assert ended.state == "promoted", ended
        assert sum(r.bundle == good["candidate"] for r in runs) >= 10
        assert asyncio.run(_head(store_url)) == good["candidate"]
        wait_until(lambda: f"running bundle {good['candidate']}" in scheduler.output(), 30)
        after = finished_runs(store_url, 4)
        assert {r.bundle for r in after} == {good["candidate"]}
        assert scheduler.stop() == 0


@pytest.mark.slow
def test_rollback_and_promote_by_hand(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "p"
    version(root, 0.0, "one")
    assert corral(root, store_url, "push").returncode == 0
    nothing = corral(root, store_url, "rollout", "rollback")
    assert nothing.returncode != 0 and "no rollout is running" in nothing.stderr
    version(root, 0.0, "two")
    started = corral(root, store_url, "push", "--canary", "20%", "--json")
    first = json.loads(started.stdout)["rollout"]
    rolled = corral(root, store_url, "rollout", "rollback")
    assert rolled.returncode == 0 and "rolled back" in rolled.stdout, rolled.stderr
    assert asyncio.run(_head(store_url)) == first["baseline"]
    twice = corral(root, store_url, "rollout", "rollback", str(first["id"]))
    assert twice.returncode != 0 and "has ended already" in twice.stderr
    version(root, 0.0, "three")
    second = json.loads(corral(root, store_url, "push", "--canary", "20%", "--json").stdout)
    promoted = corral(root, store_url, "rollout", "promote", str(second["rollout"]["id"]))
    assert promoted.returncode == 0 and "promoted" in promoted.stdout, promoted.stderr
    assert asyncio.run(_head(store_url)) == second["rollout"]["candidate"]
