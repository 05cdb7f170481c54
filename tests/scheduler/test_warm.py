"""Warm workspaces: prepared by ``hooks.warm`` before work arrives, taken by one run at a
time, refreshed, given back after a success, recycled, and never a cause of failure.

Real schedulers, real runs on both stores; the host runtime here, the sandbox below
(its projects live under /var/tmp: the sandbox hides /tmp).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.gateway.metrics import FleetMetrics
from corral.project import Agent, Project, load_project
from corral.scheduler import warm as warm_module
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.scheduler.warm import WarmPool
from corral.store import NewItem, Run, RunState, Store, TriggerKind
from tests.runtime.conftest import require_sandbox
from tests.scheduler.helpers import all_runs, wait_for, write_project

OPTIONS = SchedulerOptions(
    poll_interval=0.05, supervise_every=0.05, drain_grace=5, kill_grace=1, pool_tick=0.2
)

#: The agent prints what it finds in its working directory, leaves a mark there, and
#: fails when its prompt says "fail"; "sleep=N;" makes it last N seconds.
RUN_SH = """echo "pwd=$(pwd)"
echo "warm=$(cat warm.txt 2>/dev/null)"
echo "trigger=$(cat trigger.txt 2>/dev/null)"
echo "refreshes=$(cat refresh.log 2>/dev/null | wc -l)"
echo "seen=$(cat runs.txt 2>/dev/null | tr '\\n' ' ')"
echo "$CORRAL_RUN_ID" >> runs.txt
t=$(sed -n 's/.*sleep=\\([0-9.]*\\);.*/\\1/p' "$CORRAL_PROMPT_FILE" | head -n 1)
[ -n "$t" ] && sleep "$t"
case "$(cat "$CORRAL_PROMPT_FILE")" in *FAIL-NOW*) exit 3;; esac
exit 0
"""

WARM_HOOKS = (
    "[hooks]\n"
    'warm = ["echo prepared > warm.txt", "echo $CORRAL_TRIGGER > trigger.txt"]\n'
    'refresh = ["echo refreshed >> refresh.log"]\n'
)


def warm_project(root: Path, scale: str, hooks: str = WARM_HOOKS, runtime: str = "") -> Project:
    project = write_project(
        root, {"w": {"command": 'sh "$CORRAL_AGENT_DIR/run.sh"'}}, tables={"w": runtime}
    )
    config = project.agents["w"].dir / "config.toml"
    config.write_text(config.read_text() + hooks + scale)
    (root / "agents" / "w" / "run.sh").write_text(RUN_SH)
    return load_project(root)


class Fleet:
    """A scheduler running in this test's loop."""

    def __init__(self, project: Project, store: Store) -> None:
        self.scheduler = Scheduler(project, store, OPTIONS)
        self.scheduler.watcher = None
        self.store = store
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Fleet:
        async def go() -> None:
            await self.scheduler.start()
            await self.scheduler.run(self.stop, self.stop)

        self.task = asyncio.create_task(go())
        await wait_for(lambda: self.scheduler.info is not None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    async def ready(self, count: int, timeout: float = 30) -> None:
        await wait_for(lambda: self.scheduler.warm.counts().get("w") == count, timeout=timeout)

    async def run(self, prompt: str = "go") -> Run:
        return (await self.runs(prompt))[0]

    async def runs(self, *prompts: str) -> list[Run]:
        before = len(await all_runs(self.store))
        for prompt in prompts:
            await self.scheduler.submit(NewItem("w", TriggerKind.MANUAL, prompt=prompt))

        async def ended() -> bool:
            runs = await all_runs(self.store)
            return len([r for r in runs if r.state.is_terminal]) >= before + len(prompts)

        await wait_for(ended, timeout=60)
        runs = sorted(await all_runs(self.store), key=lambda r: r.created_at)
        return runs[before:]

    def log(self, run: Run) -> dict[str, str]:
        text = self.scheduler.executor.log_path(run.id).read_text()
        found = {"text": text}
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            if eq and key.isalpha():
                found[key] = value.strip()
        return found


async def test_a_warm_run_starts_in_the_prepared_workspace_after_its_refresh(
    tmp_path: Path, store: Store
) -> None:
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 2\nwarm = 1\n")
    async with Fleet(project, store) as fleet:
        await fleet.ready(1)
        first = await fleet.run()
        second = await fleet.run()
        assert fleet.scheduler.warm.counts() == {"w": 1}
        metrics = FleetMetrics(store, warm=fleet.scheduler.warm.counts)
        assert 'corral_warm_ready{agent="w"} 1.0' in (await metrics.render()).decode()
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED)
    one, two = fleet.log(first), fleet.log(second)
    assert "[corral] warm start: workspace" in one["text"], one["text"]
    assert one["warm"] == "prepared" and one["trigger"] == "warm"
    assert one["refreshes"] == "1" and one["seen"] == ""
    # The second run is in the same workspace: the first run's mark, two refreshes.
    assert two["pwd"] == one["pwd"] and "/.corral/warm/w/" in one["pwd"]
    assert two["refreshes"] == "2" and two["seen"] == first.id
    # The run's own corral files did not stay behind for the next run.
    assert not (Path(one["pwd"]) / ".corral").exists()


async def test_a_cold_run_of_a_warm_agent_runs_the_warm_hooks_first(
    tmp_path: Path, store: Store
) -> None:
    """Two runs at once with one warm workspace: one warm, one cold, never the same
    directory; the cold one ran hooks.warm itself."""
    project = warm_project(tmp_path / "p", "[scale]\nmin = 2\nmax = 2\nwarm = 1\n")
    async with Fleet(project, store) as fleet:
        await fleet.ready(1)
        runs = await fleet.runs("sleep=1.5;", "sleep=1.5;", "sleep=1.5;")
    assert all(r.state is RunState.SUCCEEDED for r in runs), [(r.id, r.error) for r in runs]
    logs = [fleet.log(r) for r in runs]
    warm = [log for log in logs if "warm start" in log["text"]]
    cold = [log for log in logs if "cold start" in log["text"]]
    assert len(warm) >= 1 and len(warm) + len(cold) == 3
    for log in cold:
        assert log["warm"] == "prepared" and log["refreshes"] == "0"
        assert "/.corral/runs/" in log["pwd"]
    for log in warm:
        assert "/.corral/warm/w/" in log["pwd"]


async def test_two_concurrent_runs_never_share_a_workspace(tmp_path: Path, store: Store) -> None:
    project = warm_project(tmp_path / "p", "[scale]\nmin = 3\nmax = 3\nwarm = 3\n")
    async with Fleet(project, store) as fleet:
        await fleet.ready(3)
        runs = await fleet.runs(*["sleep=1;"] * 6)
    assert all(r.state is RunState.SUCCEEDED for r in runs), [(r.id, r.error) for r in runs]
    logs = {r.id: fleet.log(r) for r in runs}
    spans = {r.id: (r.started_at, r.ended_at) for r in runs}
    for a in runs:
        for b in runs:
            if a.id >= b.id:
                continue
            sa, sb = spans[a.id], spans[b.id]
            assert sa[0] and sa[1] and sb[0] and sb[1]
            if sa[0] < sb[1] and sb[0] < sa[1]:  # they overlapped
                assert logs[a.id]["pwd"] != logs[b.id]["pwd"], (a.id, b.id)
    # The runs in one workspace came one after another: each saw all the earlier ones.
    by_place: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.started_at or r.created_at):
        by_place.setdefault(logs[run.id]["pwd"], []).append(run)
    for place, served in by_place.items():
        for n, run in enumerate(served):
            assert logs[run.id]["seen"].split() == [r.id for r in served[:n]], place


async def test_a_failed_run_is_not_reused_and_workspaces_recycle_after_warm_max_runs(
    tmp_path: Path, store: Store
) -> None:
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\nwarmMaxRuns = 2\n")
    async with Fleet(project, store) as fleet:
        await fleet.ready(1)
        a1 = await fleet.run()
        a2 = await fleet.run()  # the workspace's second run: it is deleted after
        await fleet.ready(1)
        b1 = await fleet.run("FAIL-NOW")  # failed: deleted
        await fleet.ready(1)
        c1 = await fleet.run()
    errors = [(r.error, fleet.log(r)["text"]) for r in (a1, a2, b1, c1)]
    assert [r.state for r in (a1, a2, b1, c1)] == [
        RunState.SUCCEEDED,
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.SUCCEEDED,
    ], errors
    pa1, pa2, pb1, pc1 = (fleet.log(r)["pwd"] for r in (a1, a2, b1, c1))
    assert pa1 == pa2
    assert len({pa1, pb1, pc1}) == 3
    assert not Path(pa1).exists() and not Path(pb1).exists()
    assert fleet.log(b1)["seen"] == "" and fleet.log(c1)["seen"] == ""
    assert all("warm start" in fleet.log(r)["text"] for r in (a1, a2, b1, c1))


async def test_a_failing_warm_hook_never_fails_a_run(tmp_path: Path, store: Store) -> None:
    hooks = '[hooks]\nwarm = ["echo trying; exit 7"]\n'
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\n", hooks)
    warm_log = tmp_path / "p" / ".corral" / "logs" / "warm-w.log"
    async with Fleet(project, store) as fleet:
        await wait_for(lambda: warm_log.exists() and "exited with code 7" in warm_log.read_text())
        run = await fleet.run()
        assert fleet.scheduler.warm.counts() == {"w": 0}
    assert run.state is RunState.SUCCEEDED, run.error
    text = fleet.log(run)["text"]
    assert "cold start" in text and "warm hook 1 (`echo trying; exit 7`) exited with code 7" in text
    # No half-prepared workspace is left behind.
    assert [p.name for p in (tmp_path / "p" / ".corral" / "warm" / "w").iterdir()] == []


async def test_a_reload_that_changes_the_agent_discards_its_workspaces(
    tmp_path: Path, store: Store
) -> None:
    root = tmp_path / "p"
    project = warm_project(root, "[scale]\nmin = 1\nmax = 1\nwarm = 1\n")
    async with Fleet(project, store) as fleet:
        await fleet.ready(1)
        (old,) = fleet.scheduler.warm.ready("w")
        config = root / "agents" / "w" / "config.toml"
        config.write_text(config.read_text().replace("warm = 1", "warm = 1\nwarmMaxRuns = 3"))
        await fleet.scheduler.reload(load_project(root))
        assert not (root / ".corral" / "warm" / "w" / old).exists()
        await fleet.ready(1)
        assert fleet.scheduler.warm.ready("w") != [old]


async def _ready(agent: Agent, path: Path, key: str) -> bool:
    return True


async def _big(agent: Agent, path: Path, key: str) -> bool:
    """A workspace of 10,000 files (a virtual environment, node_modules)."""

    def fill() -> None:
        for d in range(50):
            (path / f"d{d}").mkdir()
            for f in range(200):
                os.close(os.open(path / f"d{d}" / f"f{f}", os.O_CREAT | os.O_WRONLY, 0o600))
        (path / ".corral").mkdir()
        (path / ".corral" / "prompt").write_text("x")

    await asyncio.to_thread(fill)
    return True


async def test_deleting_a_big_workspace_never_blocks_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\n")
    agent = project.agents["w"]
    pool = WarmPool(project, _big)
    await pool._prepare(agent)
    where: list[threading.Thread] = []
    rmtree = shutil.rmtree

    def spy(path: object, *args: object, **kwargs: object) -> None:
        where.append(threading.current_thread())
        rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(warm_module.shutil, "rmtree", spy)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    first = pool.take(agent)
    assert first is not None
    assert pool.give_back(agent, first, succeeded=True)  # its .corral goes
    second = pool.take(agent)
    assert second is not None and not (second.path / ".corral").exists()
    assert not pool.give_back(agent, second, succeeded=False)  # the whole tree goes
    folder = tmp_path / "p" / ".corral" / "warm" / "w"
    await wait_for(lambda: not list(folder.iterdir()), timeout=30)
    stop.set()
    await ticker
    await pool.stop()
    assert len(where) == 2 and threading.main_thread() not in where
    assert max(gaps) < 0.5, max(gaps)


async def test_a_preparation_that_raises_is_retried_with_backoff(tmp_path: Path) -> None:
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\n")
    attempts: list[float] = []

    async def broken(agent: Agent, path: Path, key: str) -> bool:
        attempts.append(time.monotonic())
        raise OSError(28, "No space left on device")

    pool = WarmPool(project, broken)
    pool.start()
    await asyncio.sleep(2.5)
    await pool.stop()
    # At once, then after FIRST_BACKOFF (2 s): not a hot loop.
    assert 1 <= len(attempts) <= 3, len(attempts)
    assert pool._failures.get("w", 0) == len(attempts)
    assert [p.name for p in (tmp_path / "p" / ".corral" / "warm" / "w").iterdir()] == []


async def test_a_run_of_another_config_starts_cold_and_leaves_the_pool_alone(
    tmp_path: Path,
) -> None:
    """A rollout's canary runs a changed config: it does not wipe the pool."""
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\n")
    canary = warm_project(tmp_path / "q", "[scale]\nmin = 1\nmax = 1\nwarm = 1\nwarmMaxRuns = 3\n")
    pool = WarmPool(project, _ready)
    await pool._prepare(project.agents["w"])
    await pool._prepare(project.agents["w"])
    keys = pool.ready("w")
    assert len(keys) == 2
    assert pool.take(canary.agents["w"]) is None
    assert pool.ready("w") == keys
    assert all((tmp_path / "p" / ".corral" / "warm" / "w" / key).is_dir() for key in keys)
    taken = pool.take(project.agents["w"])
    assert taken is not None and taken.key == keys[0]
    await pool.stop()


async def test_the_sweep_spares_a_workspace_just_taken(tmp_path: Path) -> None:
    """Taken (renamed to .busy) but its taker's pid not yet written: not abandoned."""
    project = warm_project(tmp_path / "p", "[scale]\nmin = 1\nmax = 1\nwarm = 1\n")
    pool = WarmPool(project, _ready)
    await pool._prepare(project.agents["w"])
    (key,) = pool.ready("w")
    folder = tmp_path / "p" / ".corral" / "warm" / "w"
    os.rename(folder / f"{key}.ready", folder / f"{key}.busy")
    pool.sweep_abandoned()
    assert (folder / key).is_dir() and (folder / f"{key}.busy").exists()
    # One whose holder is gone is deleted.
    (folder / f"{key}.busy").write_text('{"pid": 999999999}')
    pool.sweep_abandoned()
    await pool.stop()
    assert not (folder / key).exists() and not (folder / f"{key}.busy").exists()


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="corral-warm-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def test_a_sandboxed_warm_run_reuses_its_workspace(outside_tmp: Path, store: Store) -> None:
    require_sandbox()
    project = warm_project(
        outside_tmp / "p",
        "[scale]\nmin = 1\nmax = 1\nwarm = 1\n",
        runtime='[runtime]\ntype = "sandbox"\n',
    )
    async with Fleet(project, store) as fleet:
        await fleet.ready(1)
        first = await fleet.run()
        second = await fleet.run()
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED), (
        first.error,
        second.error,
        fleet.log(first)["text"],
    )
    one, two = fleet.log(first), fleet.log(second)
    assert one["pwd"] == two["pwd"] == "/tmp/work"
    assert one["warm"] == "prepared" and one["trigger"] == "warm"
    assert (one["refreshes"], two["refreshes"]) == ("1", "2")
    assert two["seen"] == first.id
