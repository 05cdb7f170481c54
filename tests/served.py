"""A real gateway served in a thread of its own: uvicorn, the scheduler and a SQLite store
on their own event loop, the test talking to it over real HTTP from the main thread (as
schemathesis and httpx's sync client want). The fuzz tests of the control API, the
runner API and the webhooks share it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI

from corral.gateway.app import create_app
from corral.gateway.server import GatewayServer, bind
from corral.scheduler.service import Scheduler
from corral.store import Store, open_store
from tests.scheduler.helpers import write_project

__all__ = ["ServedGateway", "serve_gateway"]

T = TypeVar("T")


@dataclass
class ServedGateway:
    """The gateway's base URL, its store's URL, its scheduler, and what ``prepare`` made."""

    url: str
    state_url: str
    scheduler: Scheduler
    loop: asyncio.AbstractEventLoop
    prepared: Any = None

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        """Run ``make()`` on the gateway's loop (its scheduler and store live there)."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)


@contextlib.contextmanager
def serve_gateway(
    root: Path,
    agents: dict[str, dict[str, object]],
    *,
    operator: str,
    project_toml: str = "",
    agent_tables: dict[str, str] | None = None,
    configure: Callable[[Scheduler, Path], None] | None = None,
    prepare: Callable[[Scheduler, Store], Awaitable[Any]] | None = None,
    adjust: Callable[[FastAPI], None] | None = None,
) -> Iterator[ServedGateway]:
    """Write the project at ``root`` and serve its gateway (operator token ``operator``)
    until the block ends. ``configure`` runs before the scheduler starts (``root``'s
    parent for files of its own), ``prepare`` after it started, before the gateway
    serves; its result is ``prepared``. ``adjust`` changes the gateway's app before it
    serves (a middleware of the test's: what another version of it answers, say)."""
    ready, stop = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    async def main() -> None:
        project = write_project(root, agents, project_toml, agent_tables)
        state_url = f"sqlite:///{root / 'state.db'}"
        async with await open_store(state_url) as store:
            sock = bind("127.0.0.1", 0)
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            scheduler = Scheduler(project, store, gateway_url=url)
            if configure is not None:
                configure(scheduler, root.parent)
            await scheduler.start()
            prepared = None if prepare is None else await prepare(scheduler, store)
            app = create_app(scheduler, operator)
            if adjust is not None:
                adjust(app)
            server = GatewayServer.for_app(app)
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            loop = asyncio.get_running_loop()
            out["served"] = ServedGateway(url, state_url, scheduler, loop, prepared)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            server.should_exit = True
            await serving

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test
            out["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="served-gateway")
    thread.start()
    try:
        assert ready.wait(30), "the gateway did not start"
        if "error" in out:
            raise out["error"]
        yield out["served"]
    finally:
        stop.set()
        thread.join(30)
