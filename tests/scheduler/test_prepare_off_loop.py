"""A run's preparation (its directory and files, the run log) is done in the preparation
threads, at most PREPARE_THREADS at once, never on the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from corral.project import Project, load_project
from corral.runtime._children import PREPARE_THREADS
from corral.scheduler.executor import RunExecutor
from corral.scheduler.prepare import plan_run
from corral.store import Store
from tests.scheduler.test_executor import claim, make_project


def scaled_project(tmp_path: Path, scale: int) -> Project:
    project = make_project(tmp_path, "true")
    path = project.root / "agents" / "hello" / "config.toml"
    path.write_text(path.read_text().replace("scale = 1", f"scale = {scale}"))
    return load_project(project.root)


class Gate:
    """A ``then`` for plan_run that waits (in its thread) until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = 0
        self.left = 0
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.entered += 1
            self.threads.add(threading.get_ident())
        try:
            assert self.open.wait(10), "the gate was never opened"
        finally:
            with self.lock:
                self.left += 1


async def until(check: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_the_files_are_made_off_the_loop_which_keeps_serving(
    tmp_path: Path, store: Store
) -> None:
    project = make_project(tmp_path, "true")
    executor = RunExecutor(project, store)
    run = (await claim(store, project)).run
    workdir = executor.workdir(run.id)
    gate = Gate()
    planning = asyncio.create_task(
        plan_run(project, store, run, project.agents["hello"], workdir, link=None, then=gate)
    )
    await until(lambda: gate.entered == 1)
    # The preparation is stuck in its thread; the loop still turns.
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.001)
        ticks += 1
    assert ticks == 20 and not planning.done()
    assert threading.get_ident() not in gate.threads
    assert (workdir / ".corral" / "tmp").is_dir()  # made before ``then``
    gate.open.set()
    plan = await planning
    assert plan.template.env["TMPDIR"] == str(workdir / ".corral" / "tmp")
    # env.sh is made by the run's first setenv, not by corral: one inode less per run.
    assert sorted(p.name for p in (workdir / ".corral").iterdir()) == ["tmp"]


async def test_at_most_prepare_threads_preparations_run_at_once(
    tmp_path: Path, store: Store
) -> None:
    project = scaled_project(tmp_path, PREPARE_THREADS + 3)
    executor = RunExecutor(project, store)
    runs = [(await claim(store, project)).run for _ in range(PREPARE_THREADS + 3)]
    gate = Gate()
    agent = project.agents["hello"]
    tasks = [
        asyncio.create_task(
            plan_run(project, store, run, agent, executor.workdir(run.id), link=None, then=gate)
        )
        for run in runs
    ]
    await until(lambda: gate.entered == PREPARE_THREADS)
    await asyncio.sleep(0.1)
    assert gate.entered == PREPARE_THREADS  # the others wait their turn, off the loop
    gate.open.set()
    plans = await asyncio.gather(*tasks)
    assert [plan.run.id for plan in plans] == [run.id for run in runs]
    assert gate.entered == len(runs) and len(gate.threads) <= PREPARE_THREADS


async def test_a_preparation_cancelled_while_it_runs_is_settled_first(
    tmp_path: Path, store: Store
) -> None:
    project = make_project(tmp_path, "true")
    executor = RunExecutor(project, store)
    run = (await claim(store, project)).run
    gate = Gate()
    agent = project.agents["hello"]
    planning = asyncio.create_task(
        plan_run(project, store, run, agent, executor.workdir(run.id), link=None, then=gate)
    )
    await until(lambda: gate.entered == 1)
    planning.cancel()
    await asyncio.sleep(0.05)
    assert not planning.done()  # it waits for the thread, whose work is not undone
    gate.open.set()
    try:
        await planning
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation was lost")
    assert gate.left == 1


async def test_a_burst_of_runs_keeps_the_loop_turning(tmp_path: Path, store: Store) -> None:
    """32 runs at once through the executor: preparations, starts, ends; a 1 ms ticker
    is never held up for long (all of a run's file work is in threads)."""
    project = scaled_project(tmp_path, 32)
    executor = RunExecutor(project, store)
    claims = [await claim(store, project) for _ in range(32)]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(*(executor.execute(c) for c in claims))
    stop.set()
    await ticking
    assert all(r.run.state.value == "succeeded" for r in results), [r.run for r in results]
    for result in results:
        log = executor.log_path(result.run.id)
        assert log.is_file() and log.stat().st_mode & 0o777 == 0o600
        assert (executor.workdir(result.run.id) / ".corral" / "prompt.md").is_file()
    # Generous for a busy 2-core machine: the work on the loop per turn is small.
    assert sorted(gaps)[int(len(gaps) * 0.99)] < 0.25, max(gaps)
