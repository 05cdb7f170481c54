"""Execute one claimed queue item end to end: prepare, start, watch, finalise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.credentials import CredentialStore
from corral.errors import CorralError
from corral.harness.builtin import LoopResult
from corral.harness.hooks import (
    CONTEXT_TIMEOUT,
    HOOK_TIMEOUT,
    ShellResult,
    ShellRunner,
    inject_context,
    run_hooks,
)
from corral.llm.fallback import Breaker
from corral.project import Project
from corral.runtime import Process, Sink
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.builtin_run import run_builtin
from corral.scheduler.prepare import RunPlan, plan_run
from corral.scheduler.runlog import DEFAULT_LOG_LIMIT, RunLog
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


_NOTHING_SPENT: dict[str, Any] = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "cost_usd": 0.0,
}


def _loop_outcome(loop: asyncio.Task[LoopResult]) -> _Outcome:
    """What a finished built-in loop means for the run."""
    if loop.cancelled():
        return _Outcome(RunState.KILLED, None, "stopped")
    error = loop.exception()
    if error is not None:
        return _Outcome(RunState.FAILED, None, str(error))
    result = loop.result()
    if result.exit_code == 0:
        return _Outcome(RunState.SUCCEEDED, 0, None)
    if result.budget == "wall clock":
        return _Outcome(RunState.TIMED_OUT, TIMEOUT_EXIT_CODE, result.error)
    return _Outcome(RunState.FAILED, result.exit_code, result.error)


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
        credentials: CredentialStore | None = None,
        hook_timeout: float = HOOK_TIMEOUT,
        context_timeout: float = CONTEXT_TIMEOUT,
        log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> None:
        self.project = project
        self.store = store
        self.grace = grace
        self.link = link
        self.credentials = credentials
        self.hook_timeout = hook_timeout
        self.context_timeout = context_timeout
        self.log_limit = log_limit
        self._processes: dict[str, Process] = {}
        self._active: set[str] = set()
        self._stop_reasons: dict[str, str] = {}
        self._exit_codes: dict[str, int] = {}
        self._exit_tasks: set[asyncio.Task[None]] = set()
        #: Built-in harness loops, by run; and model health shared by all of them.
        self._loops: dict[str, asyncio.Task[LoopResult]] = {}
        self._breakers: dict[str, Breaker] = {}
        if link is not None:
            link.on_exit = self.request_exit

    def workdir(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "runs" / run_id

    def log_path(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "logs" / f"{run_id}.log"

    async def stop(self, run_id: str, reason: str) -> bool:
        """Stop a run this executor executes (TERM, then KILL); it is recorded as killed.

        Between its processes (hooks, the agent) the request is kept, and nothing more
        of the run starts.
        """
        if run_id not in self._active:
            return False
        self._stop_reasons.setdefault(run_id, reason)
        await self._halt(run_id)
        return True

    async def _halt(self, run_id: str) -> None:
        """Stop what the run is doing now: its current process, its built-in loop."""
        process = self._processes.get(run_id)
        if process is not None:
            await process.stop(self.grace)
        loop = self._loops.get(run_id)
        if loop is not None:
            loop.cancel()

    async def request_exit(self, run_id: str, code: int) -> bool:
        """``al-exit``: end a run this executor watches with ``code`` (TERM, then KILL).

        The group is stopped a moment later, so the command that asked can print its
        answer first; the run is recorded with ``code`` (succeeded when 0, else failed).
        """
        if run_id not in self._processes and run_id not in self._loops:
            return False
        self._exit_codes.setdefault(run_id, code)

        async def stop_soon() -> None:
            await asyncio.sleep(0.1)
            await self._halt(run_id)

        task = asyncio.create_task(stop_soon(), name=f"al-exit {run_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)
        return True

    async def execute(self, claim: Claim, sink: Sink | None = None) -> RunResult:
        self._active.add(claim.run.id)
        try:
            return await self._execute(claim, sink)
        finally:
            self._active.discard(claim.run.id)
            self._stop_reasons.pop(claim.run.id, None)
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
        capped = (
            await self.store.daily_cap_refusal(run.agent)
            if agent.config.budget.daily_cost is not None
            or self.project.config.budget.daily_cost is not None
            else None
        )
        if capped is not None:  # queued before the day's spend reached a cap
            await self.store.record_usage(run.id, **_NOTHING_SPENT, budget="daily cost")
            return await self._finalize(run, _Outcome(RunState.FAILED, None, capped))
        try:
            plan = await plan_run(
                self.project,
                self.store,
                run,
                agent,
                self.workdir(run.id),
                link=self.link,
                credentials=self.credentials,
            )
        except CorralError as exc:
            return await self._finalize(run, _Outcome(RunState.FAILED, None, str(exc)))
        logfile = RunLog(self.log_path(run.id), sink, plan.secrets, limit=self.log_limit)
        async with logfile as runlog:
            try:
                outcome = await self._run_plan(plan, runlog)
            except asyncio.CancelledError:
                # Cancelled at any point after the plan: the process group is stopped (by
                # _watch or the shell runner) and the run recorded as killed.
                reason = self._stop_reasons.pop(run.id, "stopped by the operator")
                await asyncio.shield(self._finalize(run, _Outcome(RunState.KILLED, None, reason)))
                raise
            if outcome is None:  # fenced off while starting: nothing more to record
                current = await self.store.get_run(run.id)
                return RunResult(current if current is not None else run)
            await self._post_hooks(plan, runlog, outcome)
        return await self._finalize(run, outcome)

    async def _run_plan(self, plan: RunPlan, runlog: RunLog) -> _Outcome | None:
        """Pre hooks, dynamic context, the agent itself; its outcome (None: fenced off)."""
        run, agent = plan.run, plan.agent
        failure = await run_hooks(
            "pre",
            agent.config.hooks.pre,
            self._shell(plan),
            runlog.write,
            timeout=self.hook_timeout,
        )
        if run.id in self._stop_reasons:
            return _Outcome(RunState.KILLED, None, self._stop_reasons.pop(run.id))
        if failure is not None:
            return _Outcome(RunState.FAILED, failure.result.exit_code, str(failure))
        system_prompt = await inject_context(
            agent.skill.body, self._shell(plan), timeout=self.context_timeout
        )
        if run.id in self._stop_reasons:
            return _Outcome(RunState.KILLED, None, self._stop_reasons.pop(run.id))
        if agent.config.harness.type == "builtin":
            return await self._builtin(plan, runlog, system_prompt)
        try:
            process = await plan.runtime.launch(plan.launch(self.project, system_prompt))
        except CorralError as exc:
            return _Outcome(RunState.FAILED, None, str(exc))
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
                return None
            log.info("run started", extra={"action": "run_started", "run_id": run.id})
            outcome = await self._watch(process, agent.config.timeout, runlog)
        finally:
            self._processes.pop(run.id, None)
        return self._signalled(run.id, outcome)

    async def _builtin(self, plan: RunPlan, runlog: RunLog, system_prompt: str) -> _Outcome | None:
        """The built-in harness: the tool loop in this process, tools in the runtime."""
        run = plan.run
        try:
            await self.store.mark_run_running(run.id, pid=None, host=socket.gethostname())
        except StoreError as exc:
            log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
            return None

        async def launch(argv: Sequence[str], stdin: bytes | None) -> Process:
            process = await plan.runtime.launch(plan.process(argv, stdin))
            self._processes[run.id] = process
            return process

        loop = asyncio.create_task(
            run_builtin(
                self.project, plan, system_prompt, runlog, launch, self._breakers, self.store
            ),
            name=f"builtin {run.id}",
        )
        self._loops[run.id] = loop
        try:
            await asyncio.wait({loop})
        except asyncio.CancelledError:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop
            raise
        finally:
            self._loops.pop(run.id, None)
            self._processes.pop(run.id, None)
        return self._signalled(run.id, _loop_outcome(loop))

    def _signalled(self, run_id: str, outcome: _Outcome) -> _Outcome:
        """The outcome, as changed by a stop request or an ``al-exit``."""
        reason = self._stop_reasons.pop(run_id, "")
        asked = self._exit_codes.get(run_id)
        if reason and outcome.state is not RunState.TIMED_OUT:
            return _Outcome(RunState.KILLED, outcome.exit_code, reason)
        if asked is not None and outcome.state is not RunState.TIMED_OUT:
            state = RunState.SUCCEEDED if asked == 0 else RunState.FAILED
            return _Outcome(state, asked, None if asked == 0 else f"al-exit {asked}")
        return outcome

    async def _post_hooks(self, plan: RunPlan, runlog: RunLog, outcome: _Outcome) -> None:
        """``hooks.post`` after the agent, unless the run was killed (stop means stop)."""
        if not plan.agent.config.hooks.post or outcome.state is RunState.KILLED:
            return
        await run_hooks(
            "post",
            plan.agent.config.hooks.post,
            self._shell(plan),
            runlog.write,
            timeout=self.hook_timeout,
            stop_at_failure=False,
        )

    def _shell(self, plan: RunPlan) -> ShellRunner:
        """Run one hook or dynamic-context command in the run's runtime; a stop request
        reaches it as it reaches the agent."""

        async def run(command: str, sink: Sink, timeout: float) -> ShellResult:
            try:
                process = await plan.runtime.launch(plan.shell(command))
            except CorralError as exc:
                await sink(f"[corral] {exc}\n".encode())
                return ShellResult(127)
            self._processes[plan.run.id] = process
            try:
                code = await self._pump(process, sink, timeout)
            finally:
                self._processes.pop(plan.run.id, None)
            if code is None:
                return ShellResult(TIMEOUT_EXIT_CODE, timed_out=True)
            return ShellResult(code)

        return run

    async def _pump(self, process: Process, sink: Sink, timeout: float) -> int | None:
        """The process's output to ``sink`` until it exits (its shell-style exit code), or
        until ``timeout``, when its group is stopped (None). Cancelling stops it too."""
        pump = asyncio.create_task(process.pump(sink))
        try:
            done, _ = await asyncio.wait({pump}, timeout=timeout)
        except asyncio.CancelledError:
            await self._stop_process(process, pump)
            raise
        if not done:
            await self._stop_process(process, pump)
            return None
        return exit_code_for(pump.result())

    async def _watch(self, process: Process, timeout: float, runlog: RunLog) -> _Outcome:
        code = await self._pump(process, runlog.write, timeout)
        if code is None:
            error = f"timed out after {timeout:g} s"
            return _Outcome(RunState.TIMED_OUT, TIMEOUT_EXIT_CODE, error)
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
