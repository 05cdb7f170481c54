"""The MCP tools of `corral mcp serve` and the server that offers them over stdio."""

from __future__ import annotations

import getpass
import json
import socket
import uuid
from collections import deque
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from corral._version import __version__
from corral.engine import actions
from corral.engine.actions import ActionError, Offline
from corral.errors import CorralError
from corral.inert import inert
from corral.project import Project
from corral.scheduler.service import sync_config
from corral.status import fleet_status
from corral.store import ItemState, Run, RunState, Store, open_store
from corral.transcript import render_line
from corral.views import item_json, run_json

__all__ = ["MAX_LOG_LINES", "Fleet", "build_server", "mcp_actor", "serve"]

#: The most log lines one `logs` call answers with.
MAX_LOG_LINES = 1000
_LIVE = (RunState.STARTING, RunState.RUNNING)


def mcp_actor() -> str:
    """The actor the audit log records for this server: ``mcp:<user>@<host>``."""
    return f"mcp:{getpass.getuser()}@{socket.gethostname()}"


def _refused(exc: ActionError | CorralError) -> ToolError:
    message = exc.message if isinstance(exc, ActionError) else str(exc)
    return ToolError(inert(message))


class Fleet:
    """What the tools act on: one project and its store, opened at the first call."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.actor = mcp_actor()
        self._store: Store | None = None

    async def store(self) -> Store:
        if self._store is None:
            store = await open_store(self.project.state_url)
            await sync_config(store, self.project)  # every agent of the config known to it
            self._store = store
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def target(self) -> Offline:
        return Offline(self.project, await self.store())

    # -- the tools -----------------------------------------------------------------------

    async def run(self, agent: str, prompt: str | None) -> dict[str, Any]:
        """Queue a manual run of ``agent`` (as `corral run` does with a scheduler running)."""
        key = f"mcp-{uuid.uuid4()}"
        try:
            result = await actions.queue_run(
                await self.target(), agent, prompt, actor=self.actor, key=key
            )
        except (ActionError, CorralError) as exc:
            raise _refused(exc) from None
        item = result.item
        if item.state is ItemState.REJECTED:
            raise ToolError(inert(item.reason or f"agent {agent!r} refused the run"))
        answer: dict[str, Any] = {"queued": item_json(item)}
        if result.dropped:
            answer["dropped"] = [item_json(d) for d in result.dropped]
        return answer

    async def stat(self) -> dict[str, Any]:
        """The status document of `corral stat --json`."""
        return await fleet_status(await self.store(), self.project)

    async def logs(self, target: str, lines: int) -> str:
        """The last ``lines`` lines of run ``target``'s log, or of agent ``target``'s
        latest run."""
        if not 1 <= lines <= MAX_LOG_LINES:
            raise ToolError(f"lines must be from 1 to {MAX_LOG_LINES}, got {lines}")
        store = await self.store()
        run = await store.get_run(target)
        if run is None:
            if target not in self.project.agents:
                raise ToolError(
                    f"{inert(target)!r} is neither a run id nor an agent of this project; "
                    f"agents: {', '.join(sorted(self.project.agents)) or 'none'}"
                )
            latest = await store.list_runs(agent=target, limit=1)
            if not latest:
                raise ToolError(f"agent {target!r} has no runs yet")
            run = latest[0]
        head = f"run {run.id} ({run.agent}, {run.trigger.value}, {run.state.value})"
        return head + "\n" + self._tail(run, lines)

    def _tail(self, run: Run, lines: int) -> str:
        path = self.project.root / ".corral" / "logs" / f"{run.id}.log"
        try:
            with path.open("rb") as handle:
                raw = deque(handle, maxlen=lines)
        except FileNotFoundError:
            return "(no log yet)"
        shown: deque[str] = deque(maxlen=lines)
        for line in raw:
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            shown.extend(inert(part) for part in render_line(text))
        return "\n".join(shown) if shown else "(the log is empty)"

    async def pause(self, agent: str | None, paused: bool) -> str:
        change = actions.pause if paused else actions.resume
        try:
            await change(await self.target(), agent, actor=self.actor)
        except (ActionError, CorralError) as exc:
            raise _refused(exc) from None
        what = f"agent {agent}" if agent else "every agent of the project"
        if paused:
            return f"paused {what}: nothing new is dispatched; triggers are still queued"
        return f"resumed {what}: queued work is dispatched again"

    async def kill(self, target: str) -> dict[str, Any]:
        """Stop run ``target``, or every live run of agent ``target``."""
        store = await self.store()
        if await store.get_run(target) is not None:
            ids = [target]
        elif target in self.project.agents:
            ids = [r.id for r in await store.list_runs(agent=target, states=_LIVE, limit=1000)]
            if not ids:
                raise ToolError(f"agent {target!r} has no run going")
        else:
            raise ToolError(
                f"{inert(target)!r} is neither a run id nor an agent of this project; "
                "`stat` lists the running runs"
            )
        asked = []
        for run_id in ids:
            try:
                asked.append(await actions.kill(await self.target(), run_id, actor=self.actor))
            except (ActionError, CorralError) as exc:
                raise _refused(exc) from None
        return {
            "killRequested": [run_json(run) for run in asked],
            "note": "the run's scheduler stops it (SIGTERM, then SIGKILL after a grace "
            "period) and records it killed; `stat` shows when it is gone",
        }


def _json(value: dict[str, Any]) -> str:
    # Every non-ASCII character as a \u escape: no control, bidi or zero-width character
    # from a run or a webhook reaches the client raw, and JSON readers decode them back.
    return json.dumps(value, indent=2, ensure_ascii=True, default=str)


AgentName = Annotated[str, Field(description="The agent's name (its folder under agents/)")]


def build_server(fleet: Fleet) -> MCPServer:
    """An MCP server whose tools act on ``fleet``."""
    server: MCPServer = MCPServer(
        name="corral",
        version=__version__,
        instructions=(
            f"Steer the corral project at {fleet.project.root}: queue runs of its agents, "
            "see the fleet's status and runs' logs, pause, resume and kill."
        ),
    )

    @server.tool(name="run", structured_output=False)
    async def run_tool(
        agent: AgentName,
        prompt: Annotated[
            str | None, Field(description="The task; without it the agent looks for work")
        ] = None,
    ) -> str:
        """Queue a run of an agent; a running scheduler (`corral start`) dispatches it.
        Answers the queue item (its id, state, and runId once claimed)."""
        return _json(await fleet.run(agent, prompt))

    @server.tool(name="stat", structured_output=False)
    async def stat_tool() -> str:
        """The fleet at a glance, as `corral stat --json`: agents with state, running/scale
        and queue depth; running runs with their al-status; locks; recent drops and
        refusals; live schedulers."""
        return _json(await fleet.stat())

    @server.tool(name="logs", structured_output=False)
    async def logs_tool(
        target: Annotated[str, Field(description="A run id, or an agent (its latest run)")],
        lines: Annotated[int, Field(description=f"How many lines, 1-{MAX_LOG_LINES}")] = 100,
    ) -> str:
        """The last lines of a run's log (what its processes printed, redacted)."""
        return await fleet.logs(target, lines)

    @server.tool(name="pause", structured_output=False)
    async def pause_tool(
        agent: Annotated[str | None, Field(description="Omit to pause the whole project")] = None,
    ) -> str:
        """Stop dispatching new runs of an agent (or of the project); intake goes on."""
        return await fleet.pause(agent, True)

    @server.tool(name="resume", structured_output=False)
    async def resume_tool(
        agent: Annotated[str | None, Field(description="Omit to resume the whole project")] = None,
    ) -> str:
        """Dispatch again after pause."""
        return await fleet.pause(agent, False)

    @server.tool(name="kill", structured_output=False)
    async def kill_tool(
        target: Annotated[str, Field(description="A run id, or an agent (all its live runs)")],
    ) -> str:
        """Stop a run, or every running run of an agent; it is recorded as killed."""
        return _json(await fleet.kill(target))

    return server


async def serve(project: Project) -> None:
    """Serve ``project``'s tools over stdin/stdout until the client closes them."""
    fleet = Fleet(project)
    try:
        await build_server(fleet).run_stdio_async()
    finally:
        await fleet.close()
