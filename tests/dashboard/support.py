"""A real scheduler and gateway for the dashboard's tests, and a signed-in HTTP client.

The agents are shell scripts driven through files in ``$OUT``: ``say`` is printed into
the run's log (then removed), ``stop`` ends every run that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from corral.gateway.app import create_app
from corral.gateway.dashboard import Dashboard
from corral.gateway.server import GatewayServer, bind
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import NewItem, QueueItem, Run, Store, TriggerKind
from tests.scheduler.helpers import wait_for, write_project

TOKEN = "dashboard-test-token"
ACTOR = "dashboard:env"  # the token create_app is given is named "env"

#: Prints what the test puts in $OUT/say, until $OUT/stop exists.
TALKER = (
    "echo '<script>alert(\"from the log\")</script>'; al-status 'step <b>one</b>'; "
    'while [ ! -e "$OUT/stop" ]; do '
    'if [ -e "$OUT/say" ]; then cat "$OUT/say"; rm -f "$OUT/say"; fi; sleep 0.05; done'
)
#: Takes a lock, then waits for $OUT/stop.
LOCKER = (
    "rlock deploy://api-prod >/dev/null; al-status holding; "
    'while [ ! -e "$OUT/stop" ]; do sleep 0.05; done'
)

AGENTS: dict[str, dict[str, object]] = {
    "dev": {"scale": 2, "command": TALKER},
    "locker": {"command": LOCKER},
    "hooked": {"command": "true"},
    "caller": {"command": "echo '<i>context</i>' | al-subagent hooked"},
    "off": {"scale": 0, "command": "true"},
}
PROJECT = '[webhooks.open]\ntype = "generic"\nallowUnsigned = true\n'
TABLES = {
    "hooked": '[[webhooks]]\nsource = "open"\n\n[[tasks]]\nproject = "web"\nlabels = ["api"]\n'
}


@dataclass
class DashFleet:
    scheduler: Scheduler
    app: FastAPI
    url: str
    root: Path

    @property
    def store(self) -> Store:
        return self.scheduler.store

    @property
    def dashboard(self) -> Dashboard:
        dashboard: Dashboard = self.app.state.dashboard
        return dashboard

    def out(self, name: str) -> Path:
        return self.root / "out" / name

    def say(self, text: str) -> None:
        """Have the talking runs print ``text`` (one of them, once)."""
        part = self.out("say.part")
        part.write_text(text)
        part.rename(self.out("say"))

    async def trigger(self, agent: str, prompt: str | None = None) -> QueueItem:
        new = NewItem(agent=agent, trigger=TriggerKind.MANUAL, prompt=prompt)
        return (await self.scheduler.submit(new)).item

    async def running(self, agent: str, timeout: float = 15.0) -> Run:
        """Wait for a run of ``agent`` to be running (past its first status) and return it."""

        async def found() -> Run | None:
            for run in await self.store.list_runs(agent=agent, limit=10):
                if run.status_text is not None and not run.state.is_terminal:
                    return run
            return None

        await wait_for(found, timeout=timeout)
        run = await found()
        assert run is not None
        return run


@contextlib.asynccontextmanager
async def dashboard_fleet(
    root: Path,
    store: Store,
    extra: dict[str, dict[str, object]] | None = None,
    *,
    tables: dict[str, str] | None = None,
    project_toml: str = "",
) -> AsyncIterator[DashFleet]:
    """Run the project of ``AGENTS`` (and ``extra`` agents, with ``tables`` appended to
    their config.toml, and ``project_toml`` to the project's) with its gateway on a
    loopback port."""
    (root / "out").mkdir(parents=True, exist_ok=True)
    commands = {name: dict(values) for name, values in (AGENTS | (extra or {})).items()}
    for values in commands.values():
        values["command"] = f'OUT="{root / "out"}"; export OUT; {values["command"]}'
    project = write_project(root, commands, PROJECT + project_toml, TABLES | (tables or {}))
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = SchedulerOptions(
        poll_interval=0.05, supervise_every=0.05, kill_grace=2.0, drain_grace=0.5
    )
    scheduler = Scheduler(project, store, options, gateway_url=url)
    await scheduler.start()
    app = create_app(scheduler, TOKEN)
    server = GatewayServer.for_app(app)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop, stop))
    try:
        yield DashFleet(scheduler, app, url, root)
    finally:
        (root / "out" / "stop").touch()
        stop.set()
        await running
        server.should_exit = True
        await serving


_CSRF = re.compile(r'"X-CSRF-Token": "([0-9a-f]+)"')


async def login(http: httpx.AsyncClient, token: str = TOKEN) -> dict[str, str]:
    """Log ``http`` in; the headers a button of the page sends (CSRF token, htmx)."""
    answer = await http.post("/dashboard/login", data={"token": token, "next": "/dashboard"})
    assert answer.status_code == 303, answer.text
    page = await http.get("/dashboard")
    assert page.status_code == 200
    found = _CSRF.search(page.text)
    assert found is not None
    return {"X-CSRF-Token": found.group(1), "HX-Request": "true"}


class Events:
    """The events (name, data) of an open event stream, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.seen: list[tuple[str, str]] = []

    async def until(self, name: str, contains: str = "", timeout: float = 10.0) -> str:
        """The data of the next event ``name`` whose data contains ``contains``."""

        async def read() -> str:
            while True:
                event, data = await self._next()
                self.seen.append((event, data))
                if event == name and contains in data:
                    return data

        return await asyncio.wait_for(read(), timeout)

    async def _next(self) -> tuple[str, str]:
        name, data = "message", []
        async for line in self._lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                return name, "\n".join(data)
        raise EOFError("the stream ended")
