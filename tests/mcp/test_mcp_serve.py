"""`corral mcp serve` as a real subprocess, driven over stdio by the MCP SDK's own client,
beside a real `corral start`; every effect is checked in the store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import CallToolResult, TextContent

from corral.store import ItemState, Run, RunState, Store, open_store
from tests.cli.test_walking_skeleton import set_command
from tests.processes import wait_until
from tests.scheduler.procs import SchedulerProcess

pytestmark = pytest.mark.slow

TOOLS = {"run", "stat", "logs", "pause", "resume", "kill"}
# A run whose prompt says "linger" stays running until it is killed.
COMMAND = (
    'if grep -q linger "$CORRAL_PROMPT_FILE"; then echo lingering; sleep 60; fi; '
    "printf 'title:\\033]0;pwned\\007\\n'; echo done-ok"
)


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(home)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    made = subprocess.run(
        [sys.executable, "-m", "corral", "new", "demo"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    root = tmp_path / "demo"
    config = root / "agents" / "hello" / "config.toml"
    config.write_text(config.read_text().replace("*/15 * * * *", "0 0 1 1 *"))
    set_command(root, COMMAND)
    return root


@asynccontextmanager
async def mcp_client(project: Path, store_url: str) -> AsyncIterator[Client]:
    env = clean_env(project.parent) | {"CORRAL_STATE_URL": store_url}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corral", "mcp", "serve", "-p", str(project)],
        env=env,
        cwd=str(project.parent),  # -p, not the working directory, names the project
    )
    async with Client(params) as client:
        yield client


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(client: Client, tool: str, **arguments: object) -> str:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    return text_of(result)


async def refused(client: Client, tool: str, **arguments: object) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, text_of(result)
    return text_of(result)


async def until(probe: Callable[[], Awaitable[object]], timeout: float = 30.0) -> None:
    """Poll the store (there is no event to await across processes) until ``probe``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def run_of(store: Store, item_id: int) -> Run | None:
    item = await store.get_item(item_id)
    if item is None or item.run_id is None:
        return None
    return await store.get_run(item.run_id)


async def test_tools_drive_a_running_fleet(project: Path, store_url: str, tmp_path: Path) -> None:
    with SchedulerProcess(project, store_url, tmp_path / "scheduler.log") as scheduler:
        wait_until(lambda: "gateway on http" in scheduler.output(), 30)
        async with (
            mcp_client(project, store_url) as client,
            await open_store(store_url, migrate=False) as store,
        ):
            listed = await client.list_tools()
            assert {tool.name for tool in listed.tools} == TOOLS
            run_schema = next(t for t in listed.tools if t.name == "run").input_schema
            assert run_schema["required"] == ["agent"]

            # run: queued through the store, dispatched by the scheduler, seen in stat
            queued = json.loads(await call(client, "run", agent="hello", prompt="linger"))
            item_id = queued["queued"]["id"]

            async def running() -> bool:
                run = await run_of(store, item_id)
                return run is not None and run.state is RunState.RUNNING

            await until(running)
            run = await run_of(store, item_id)
            assert run is not None
            status = json.loads(await call(client, "stat"))
            assert [r["id"] for r in status["running"]] == [run.id]
            assert status["agents"][0]["agent"] == "hello"

            async def logged() -> bool:
                return "lingering" in await call(client, "logs", target=run.id)

            await until(logged)

            # kill: the scheduler stops it and records it killed
            killed = json.loads(await call(client, "kill", target=run.id))
            assert killed["killRequested"][0]["id"] == run.id

            async def ended() -> bool:
                current = await store.get_run(run.id)
                return current is not None and current.state is RunState.KILLED

            await until(ended)

            # pause: recorded in the store; what is queued meanwhile waits
            await call(client, "pause", agent="hello")
            (state,) = [s for s in await store.agent_states() if s.agent == "hello"]
            assert state.paused
            waiting = json.loads(await call(client, "run", agent="hello", prompt="quick"))
            item = await store.get_item(waiting["queued"]["id"])
            assert item is not None and item.state is ItemState.QUEUED

            # resume: dispatched again, and it runs to its end
            await call(client, "resume", agent="hello")
            (state,) = [s for s in await store.agent_states() if s.agent == "hello"]
            assert not state.paused

            async def succeeded() -> bool:
                done = await run_of(store, waiting["queued"]["id"])
                return done is not None and done.state is RunState.SUCCEEDED

            await until(succeeded)
            tail = await call(client, "logs", target="hello", lines=5)
            assert "done-ok" in tail
            assert "title:\\x1b]0;pwned\\x07" in tail  # the run's escape, made visible
            assert "\x1b" not in tail

            audit = await store.list_audit(limit=20)
            actions = {"run.trigger", "run.kill", "agent.pause", "agent.resume"}
            assert {e.action for e in audit} == actions
            assert all(e.actor.startswith("mcp:") for e in audit)

        assert scheduler.stop() == 0


async def test_refusals_are_tool_errors_that_say_what_was_wrong(
    project: Path, store_url: str
) -> None:
    async with mcp_client(project, store_url) as client:
        assert "unknown agent 'nope'" in await refused(client, "run", agent="nope")
        assert "agents: hello" in await refused(client, "pause", agent="nope")
        no_run = await refused(client, "kill", target="no-such-run")
        assert "neither a run id nor an agent" in no_run
        assert "has no run going" in await refused(client, "kill", target="hello")
        assert "lines must be from 1 to 1000" in await refused(
            client, "logs", target="hello", lines=0
        )
        assert "has no runs yet" in await refused(client, "logs", target="hello")
        # without a scheduler a queued run waits, and stat says no scheduler runs
        queued = json.loads(await call(client, "run", agent="hello"))
        assert queued["queued"]["state"] == "queued"
        status = json.loads(await call(client, "stat"))
        assert status["schedulers"] == []
        assert status["agents"][0]["queued"] == 1


def test_a_bad_project_is_refused_before_serving(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral", "mcp", "serve", "-p", str(tmp_path / "absent")],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stdout == ""  # stdout is the protocol's: nothing else goes there
    assert "absent" in result.stderr
