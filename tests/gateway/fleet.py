"""A real scheduler and gateway in the test's event loop, for end-to-end agent tests.

Runs are real processes running the installed in-run commands against the gateway over
loopback HTTP, exactly as under `corral start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from corral.gateway.app import create_app
from corral.gateway.server import GatewayServer, bind, bind_unix, unix_socket_path
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import NewItem, QueueItem, Run, Store, TriggerKind
from tests.scheduler.helpers import wait_for, write_project

TOKEN = "operator-token-for-tests"


@dataclass
class Fleet:
    scheduler: Scheduler
    url: str
    root: Path
    app: FastAPI

    @property
    def store(self) -> Store:
        return self.scheduler.store

    async def trigger(self, agent: str, prompt: str | None = None) -> QueueItem:
        new = NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt=prompt)
        return (await self.scheduler.submit(new)).item

    async def finished(self, agent: str, count: int, timeout: float = 30.0) -> list[Run]:
        """Wait until ``agent`` has ``count`` ended runs; return them, oldest first."""

        async def done() -> bool:
            runs = await self.store.list_runs(agent=agent, limit=1000)
            return sum(run.state.is_terminal for run in runs) >= count

        await wait_for(done, timeout=timeout)
        runs = await self.store.list_runs(agent=agent, limit=1000)
        return sorted((r for r in runs if r.state.is_terminal), key=lambda r: r.created_at)

    def out(self, name: str) -> Path:
        """A file the agents' scripts write into (``$OUT/<name>``)."""
        return self.root / "out" / name

    def json_lines(self, name: str) -> list[dict[str, object]]:
        path = self.out(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def running_fleet(
    root: Path,
    store: Store,
    agents: dict[str, dict[str, object]],
    project_toml: str = "",
    tables: dict[str, str] | None = None,
) -> AsyncIterator[Fleet]:
    """Write the project (each agent's ``command`` may use ``$OUT``), then run it."""
    (root / "out").mkdir(parents=True, exist_ok=True)
    commands = {name: dict(values) for name, values in agents.items()}
    for values in commands.values():
        values["command"] = f'OUT="{root / "out"}"; export OUT; {values["command"]}'
    project = write_project(root, commands, project_toml, tables)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    socket_path = unix_socket_path(project.root)
    unix_sock = bind_unix(socket_path)
    options = SchedulerOptions(poll_interval=0.05, supervise_every=0.05, kill_grace=2.0)
    scheduler = Scheduler(
        project, store, options, gateway_url=url, gateway_unix_url=f"unix:{socket_path}"
    )
    await scheduler.start()
    app = create_app(scheduler, TOKEN)
    server = GatewayServer.for_app(app)
    serving = asyncio.create_task(server.serve(sockets=[sock, unix_sock]))
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop, stop))
    try:
        yield Fleet(scheduler, url, root, app)
    finally:
        stop.set()
        await running
        server.should_exit = True
        await serving
