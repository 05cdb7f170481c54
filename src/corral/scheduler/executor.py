"""Execute one claimed queue item end to end: prepare, start, watch, finalise."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from corral.agentcmd import bash_init_path
from corral.errors import CorralError
from corral.harness import PromptContext, RunFiles, base_environment, build_launch, build_prompt
from corral.project import Agent, Project
from corral.runtime import Process, Sink, runtime_for
from corral.scheduler.agentlink import AgentLink
from corral.store import Claim, QueueItem, Run, RunState, StaleFence, Store, StoreError

__all__ = ["TIMEOUT_EXIT_CODE", "RunExecutor", "RunResult"]

log = logging.getLogger("corral.run")

#: The exit code a timed-out run is recorded with (as `timeout(1)` uses).
TIMEOUT_EXIT_CODE = 124


def exit_code_for(returncode: int) -> int:
    """A shell-style exit code: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class RunResult:
    """A finished run, and the rerun it asked for (queued in the same transaction)."""

    run: Run
    rerun_item: QueueItem | None = None


@dataclass(frozen=True)
class _Outcome:
    state: RunState
    exit_code: int | None
    error: str | None


class RunExecutor:
    """Runs claimed items of one project against one store.

    ``grace`` is how long a run has between SIGTERM and SIGKILL when it is
    stopped (timeout, kill, shutdown).
    """

    def __init__(
        self,
        project: Project,
        store: Store,
        *,
        grace: float = 10.0,
        link: AgentLink | None = None,
    ) -> None:
        self.project = project
        self.store = store
        self.grace = grace
        self.link = link
        self._processes: dict[str, Process] = {}
        self._stop_reasons: dict[str, str] = {}
        self._exit_codes: dict[str, int] = {}
        self._exit_tasks: set[asyncio.Task[None]] = set()
        if link is not None:
            link.on_exit = self.request_exit

    def workdir(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "runs" / run_id

    def log_path(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "logs" / f"{run_id}.log"

    async def stop(self, run_id: str, reason: str) -> bool:
        """Stop a run this executor watches (TERM, then KILL); it is recorded as killed."""
        process = self._processes.get(run_id)
        if process is None:
            return False
        self._stop_reasons.setdefault(run_id, reason)
        await process.stop(self.grace)
        return True

    async def request_exit(self, run_id: str, code: int) -> bool:
        """``al-exit``: end a run this executor watches with ``code`` (TERM, then KILL).

        The group is stopped a moment later, so the command that asked can print its
        answer first; the run is recorded with ``code`` (succeeded when 0, else failed).
        """
        process = self._processes.get(run_id)
        if process is None:
            return False
        self._exit_codes.setdefault(run_id, code)

        async def stop_soon() -> None:
            await asyncio.sleep(0.1)
            await process.stop(self.grace)

        task = asyncio.create_task(stop_soon(), name=f"al-exit {run_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)
        return True

    async def execute(self, claim: Claim, sink: Sink | None = None) -> RunResult:
        try:
            return await self._execute(claim, sink)
        finally:
            self._exit_codes.pop(claim.run.id, None)
            if self.link is not None:
                self.link.revoke(claim.run.id)
                self.link.changes.notify_all()  # its locks and its call may have moved on

    async def _execute(self, claim: Claim, sink: Sink | None) -> RunResult:
        run = claim.run
        agent = self.project.agents.get(run.agent)
        if agent is None:
            missing = f"agent '{run.agent}' is no longer in the project"
            return await self._finalize(run, _Outcome(RunState.FAILED, None, missing))
        try:
            process = await self._start(run, agent)
        except CorralError as exc:
            return await self._finalize(run, _Outcome(RunState.FAILED, None, str(exc)))
        self._processes[run.id] = process
        try:
            try:
                await self.store.mark_run_running(
                    run.id, pid=process.pid, host=socket.gethostname()
                )
            except StoreError as exc:
                # The run ended while it was starting (its lease lapsed, or it was killed).
                await process.stop(self.grace)
                log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
                current = await self.store.get_run(run.id)
                return RunResult(current if current is not None else run)
            log.info("run started", extra={"action": "run_started", "run_id": run.id})
            outcome = await self._watch(run.id, process, agent.config.timeout, sink)
        except asyncio.CancelledError:
            # Cancelled at any point after the spawn: the group is stopped and recorded.
            await process.stop(self.grace)
            reason = self._stop_reasons.pop(run.id, "stopped by the operator")
            await asyncio.shield(self._finalize(run, _Outcome(RunState.KILLED, None, reason)))
            raise
        finally:
            self._processes.pop(run.id, None)
        reason = self._stop_reasons.pop(run.id, "")
        asked = self._exit_codes.get(run.id)
        if reason and outcome.state is not RunState.TIMED_OUT:
            outcome = _Outcome(RunState.KILLED, outcome.exit_code, reason)
        elif asked is not None and outcome.state is not RunState.TIMED_OUT:
            state = RunState.SUCCEEDED if asked == 0 else RunState.FAILED
            outcome = _Outcome(state, asked, None if asked == 0 else f"al-exit {asked}")
        return await self._finalize(run, outcome)

    async def _start(self, run: Run, agent: Agent) -> Process:
        files = RunFiles.under(self.workdir(run.id))
        ctx = PromptContext(
            params=agent.config.params,
            workdir=files.workdir,
            shared_dir=self.project.shared_dir,
            trigger=run.trigger.value,
            user_prompt=run.prompt,
            payload=run.trigger_detail,
        )
        prompt = build_prompt(ctx)
        files.write(prompt, agent.skill.body)
        env = {**base_environment(), **self._run_environment(run, agent)}
        offline = agent.config.runtime.network == "none"
        env.update(await self._gateway_environment(run, files, env.get("PATH", ""), offline))
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
            "CORRAL_ITEM_ID": str(run.item_id),
            "CORRAL_ATTEMPT": str(run.attempt),
        }

    async def _gateway_environment(
        self, run: Run, files: RunFiles, path: str, offline: bool
    ) -> dict[str, str]:
        """What the in-run commands need: the gateway, the run's secret, the setenv file.

        The secret's hash is in the store before the run starts: an agent may call the
        gateway at once. A run without a network (``network = "none"``) reaches the
        gateway over its Unix socket.
        """
        link = self.link
        if link is None:
            return {}
        secret, ref = link.issue(run.id, run.agent, run.trigger.value)
        await self.store.set_run_secret(run.id, ref.secret_hash)
        env = {"CORRAL_RUN_SECRET": secret, "CORRAL_ENV_FILE": str(files.env_file)}
        url = link.unix_url if offline and link.unix_url else link.gateway_url
        if url:
            env["GATEWAY_URL"] = url
        if link.bin_dir is not None:
            env["PATH"] = f"{link.bin_dir}:{path}" if path else str(link.bin_dir)
            env["BASH_ENV"] = str(bash_init_path(link.bin_dir))
        return env

    async def _watch(
        self, run_id: str, process: Process, timeout: float, sink: Sink | None
    ) -> _Outcome:
        path = self.log_path(run_id)
        try:
            logfile = path.open("ab")
        except FileNotFoundError:  # the first run, or the logs were cleaned away
            path.parent.mkdir(parents=True, exist_ok=True)
            logfile = path.open("ab")
        with logfile:
            pump = asyncio.create_task(process.pump(_tee(logfile, sink)))
            try:
                done, _ = await asyncio.wait({pump}, timeout=timeout)
            except asyncio.CancelledError:
                await self._stop_process(process, pump)
                raise
            if not done:
                await self._stop_process(process, pump)
                error = f"timed out after {timeout:g} s"
                return _Outcome(RunState.TIMED_OUT, TIMEOUT_EXIT_CODE, error)
            code = exit_code_for(pump.result())
        if code == 0:
            return _Outcome(RunState.SUCCEEDED, 0, None)
        return _Outcome(RunState.FAILED, code, f"exited with code {code}")

    async def _stop_process(self, process: Process, pump: asyncio.Task[int]) -> None:
        await process.stop(self.grace)
        # The pipe closes once every process in the group is gone; a process that
        # left the group (setsid) and still holds it must not keep the run open.
        done, _ = await asyncio.wait({pump}, timeout=self.grace)
        if not done:
            pump.cancel()

    async def _finalize(self, run: Run, outcome: _Outcome) -> RunResult:
        if run.fence is None:
            raise CorralError(f"run {run.id} has no fencing token; it was not claimed")
        try:
            result = await asyncio.shield(
                self.store.finalize(
                    run.id,
                    fence=run.fence,
                    state=outcome.state,
                    exit_code=outcome.exit_code,
                    error=outcome.error,
                )
            )
        except StaleFence as exc:
            log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
            current = await self.store.get_run(run.id)
            return RunResult(current if current is not None else run)
        extra = {"action": "run_finished", "run_id": run.id, "state": outcome.state.value}
        log.info("run finished", extra=extra)
        return RunResult(result.run, result.rerun_item)


def _tee(logfile: BinaryIO, sink: Sink | None) -> Sink:
    async def write(chunk: bytes) -> None:
        logfile.write(chunk)
        logfile.flush()
        if sink is not None:
            await sink(chunk)

    return write
