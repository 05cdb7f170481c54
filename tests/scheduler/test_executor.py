"""One run end to end through the executor, recorded in both stores."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from corral.project import Project, load_project
from corral.scaffold import create_project
from corral.scheduler.executor import RunExecutor
from corral.scheduler.service import agent_specs
from corral.store import Claim, ItemState, NewItem, RunState, Store, TriggerKind


def make_project(tmp_path: Path, command: str, extra: str = "", timeout: int = 300) -> Project:
    root = tmp_path / "proj"
    create_project(root)
    path = root / "agents" / "hello" / "config.toml"
    text = path.read_text().replace("timeout = 300", f"timeout = {timeout}")
    lines = [ln for ln in text.splitlines() if not ln.startswith("command =")]
    lines.append(f"command = {json.dumps(command)}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return load_project(root)


async def claim(
    store: Store,
    project: Project,
    trigger: TriggerKind = TriggerKind.MANUAL,
    prompt: str | None = None,
) -> Claim:
    """Queue one item for `hello` and claim it, as a scheduler would."""
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    queued = await store.enqueue(NewItem(agent="hello", trigger=trigger, prompt=prompt))
    [claimed] = await store.claim("test-owner", lease_seconds=60, limit=1, item_id=queued.item.id)
    return claimed


def _later(clock: Callable[[], datetime], seconds: float) -> Callable[[], datetime]:
    return lambda: clock() + timedelta(seconds=seconds)


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


async def test_a_run_is_recorded_from_start_to_end(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, "cat; echo; echo done")
    out = Collect()
    executor = RunExecutor(project, store)

    run = (await executor.execute(await claim(store, project, prompt="do it"), out)).run

    assert run.state is RunState.SUCCEEDED
    assert run.exit_code == 0
    assert run.pid is not None and run.host == socket.gethostname()
    assert run.started_at is not None and run.ended_at is not None
    assert run.created_at <= run.started_at <= run.ended_at
    assert run.prompt == "do it"
    assert out.data.decode().startswith("<agent-config>\n")
    assert "<user-prompt>\ndo it\n</user-prompt>" in out.data.decode()
    assert executor.log_path(run.id).read_bytes() == out.data
    prompt_file = executor.workdir(run.id) / ".corral" / "prompt.md"
    assert prompt_file.read_text() + "\ndone\n" == out.data.decode()
    assert await store.get_run(run.id) == run


async def test_the_run_environment_is_built_not_inherited(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    project = make_project(tmp_path, "env | sort", '[harness.env]\nEXTRA = "yes"\n')
    out = Collect()
    run = (
        await RunExecutor(project, store).execute(
            await claim(store, project, TriggerKind.SCHEDULE), out
        )
    ).run
    env = dict(line.split("=", 1) for line in out.data.decode().splitlines() if "=" in line)
    assert run.state is RunState.SUCCEEDED
    assert "DATABASE_PASSWORD" not in env
    assert env["EXTRA"] == "yes"
    assert env["CORRAL_RUN_ID"] == run.id
    assert env["CORRAL_AGENT"] == "hello"
    assert env["CORRAL_TRIGGER"] == "schedule"
    assert env["CORRAL_SHARED_DIR"] == str(project.shared_dir)
    assert Path(env["CORRAL_PROMPT_FILE"]).is_file()
    assert env["PATH"] == os.environ["PATH"]


async def test_a_failing_run_keeps_its_exit_code(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, "exit 9")
    run = (await RunExecutor(project, store).execute(await claim(store, project))).run
    assert (run.state, run.exit_code, run.error) == (RunState.FAILED, 9, "exited with code 9")


async def test_timeout_stops_the_group_and_records_timed_out(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, "trap '' TERM; sleep 30 & wait", timeout=1)
    assert project.agents["hello"].config.timeout == 1
    executor = RunExecutor(project, store, grace=0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    run = (await executor.execute(await claim(store, project))).run
    assert loop.time() - began < 10
    assert (run.state, run.exit_code) == (RunState.TIMED_OUT, 124)


async def test_cancelling_the_executor_kills_the_run(tmp_path: Path, store: Store) -> None:
    ready = tmp_path / "ready"
    project = make_project(tmp_path, f"touch {ready}; sleep 30")
    executor = RunExecutor(project, store, grace=1)
    task = asyncio.create_task(executor.execute(await claim(store, project)))
    while not ready.exists():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [run] = await store.list_runs()
    assert run.state is RunState.KILLED
    assert run.error == "stopped by the operator"
    [item] = await store.list_items()
    assert item.state is ItemState.DONE


async def test_a_run_whose_lease_was_handed_on_cannot_finalise(
    tmp_path: Path, store: Store
) -> None:
    """Fencing: after a lapse the item is delivered again; the old run's outcome is refused."""
    project = make_project(tmp_path, "sleep 0.2")
    stale = await claim(store, project)
    store.clock = _later(store.clock, seconds=120)  # the lease of `stale` lapses
    await store.recover_lapsed()
    [fresh] = await store.claim("other-owner", lease_seconds=60, limit=1)
    assert fresh.item.id == stale.item.id and fresh.run.fence > stale.run.fence  # type: ignore[operator]
    result = await RunExecutor(project, store).execute(stale)
    assert result.run.state is RunState.LOST
    item = await store.get_item(stale.item.id)
    assert item is not None and item.state is ItemState.CLAIMED and item.run_id == fresh.run.id
