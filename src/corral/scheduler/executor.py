"""Execute one run end to end: record it, prepare it, start it, watch it, finish it."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from corral.errors import CorralError
from corral.harness import PromptContext, RunFiles, base_environment, build_launch, build_prompt
from corral.project import Agent, Project
from corral.runtime import Process, Sink, runtime_for
from corral.store import NewRun, Run, RunState, Store, TriggerKind

__all__ = ["RunExecutor", "RunRequest", "exit_code_for"]

log = logging.getLogger("corral.run")

#: The exit code a timed-out run is recorded with (as `timeout(1)` uses).
TIMEOUT_EXIT_CODE = 124


@dataclass(frozen=True)
class RunRequest:
    agent: Agent
    trigger: TriggerKind
    prompt: str | None = None
    payload: Mapping[str, Any] | None = None
    parent_run_id: str | None = None


def exit_code_for(returncode: int) -> int:
    """A shell-style exit code: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class RunExecutor:
    """Runs agents of one project against one store.

    ``grace`` is how long a run has between SIGTERM and SIGKILL when it is
    stopped (timeout, kill, shutdown).
    """

    def __init__(self, project: Project, store: Store, *, grace: float = 10.0) -> None:
        self.project = project
        self.store = store
        self.grace = grace

    def workdir(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "runs" / run_id

    def log_path(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "logs" / f"{run_id}.log"

    async def execute(self, request: RunRequest, sink: Sink | None = None) -> Run:
        run = await self.store.create_run(
            NewRun(
                agent=request.agent.name,
                trigger=request.trigger,
                trigger_detail=dict(request.payload) if request.payload else None,
                prompt=request.prompt,
                parent_run_id=request.parent_run_id,
            )
        )
        log.info("run created", extra={"action": "run_created", "run_id": run.id})
        try:
            process = await self._start(run, request)
        except CorralError as exc:
            return await self._finish(run.id, RunState.FAILED, None, str(exc))
        await self.store.mark_run_running(run.id, pid=process.pid, host=socket.gethostname())
        log.info("run started", extra={"action": "run_started", "run_id": run.id})
        return await self._watch(run.id, process, request.agent.config.timeout, sink)

    async def _start(self, run: Run, request: RunRequest) -> Process:
        agent = request.agent
        files = RunFiles.under(self.workdir(run.id))
        ctx = PromptContext(
            params=agent.config.params,
            workdir=files.workdir,
            shared_dir=self.project.shared_dir,
            trigger=request.trigger.value,
            user_prompt=request.prompt,
            payload=request.payload,
        )
        prompt = build_prompt(ctx)
        files.write(prompt, agent.skill.body)
        env = {**base_environment(), **self._run_environment(run, agent)}
        spec = build_launch(agent.config.harness.command, files, env, prompt)
        runtime = runtime_for(agent.config.runtime.type)
        return await runtime.launch(spec)

    def _run_environment(self, run: Run, agent: Agent) -> dict[str, str]:
        return {
            **dict(agent.config.harness.env),
            "CORRAL_RUN_ID": run.id,
            "CORRAL_AGENT": agent.name,
            "CORRAL_AGENT_DIR": str(agent.dir),
            "CORRAL_SHARED_DIR": str(self.project.shared_dir),
            "CORRAL_TRIGGER": run.trigger.value,
        }

    async def _watch(self, run_id: str, process: Process, timeout: float, sink: Sink | None) -> Run:
        path = self.log_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as logfile:
            pump = asyncio.create_task(process.pump(_tee(logfile, sink)))
            try:
                done, _ = await asyncio.wait({pump}, timeout=timeout)
            except asyncio.CancelledError:
                await self._stop(process, pump)
                await asyncio.shield(
                    self._finish(
                        run_id, RunState.KILLED, 128 + signal.SIGTERM, "stopped by the operator"
                    )
                )
                raise
            if not done:
                await self._stop(process, pump)
                return await self._finish(
                    run_id, RunState.TIMED_OUT, TIMEOUT_EXIT_CODE, f"timed out after {timeout:g} s"
                )
            code = exit_code_for(pump.result())
        state = RunState.SUCCEEDED if code == 0 else RunState.FAILED
        return await self._finish(
            run_id, state, code, None if code == 0 else f"exited with code {code}"
        )

    async def _stop(self, process: Process, pump: asyncio.Task[int]) -> None:
        await process.stop(self.grace)
        # The pipe closes once every process in the group is gone; a process that
        # left the group (setsid) and still holds it must not keep the run open.
        done, _ = await asyncio.wait({pump}, timeout=self.grace)
        if not done:
            pump.cancel()

    async def _finish(
        self, run_id: str, state: RunState, code: int | None, error: str | None
    ) -> Run:
        run = await self.store.finish_run(run_id, state=state, exit_code=code, error=error)
        log.info(
            "run finished", extra={"action": "run_finished", "run_id": run_id, "state": state.value}
        )
        return run


def _tee(logfile: BinaryIO, sink: Sink | None) -> Sink:
    async def write(chunk: bytes) -> None:
        logfile.write(chunk)
        logfile.flush()
        if sink is not None:
            await sink(chunk)

    return write
