"""Execute one claimed queue item end to end: prepare, start, watch, finalise."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import shutil
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from corral.credentials import CredentialStore
from corral.credentials.redact import Redactor
from corral.errors import CorralError, StoreConflict
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
from corral.project import Agent, Project
from corral.runtime import Process, Sink
from corral.runtime._contain import kill_run_async
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.builtin_run import run_builtin
from corral.scheduler.prepare import RunPlan, plan_run
from corral.scheduler.runlog import DEFAULT_LOG_LIMIT, RunLog
from corral.scheduler.warm import WarmInstance, WarmPool, warm_settings
from corral.store import (
    Claim,
    QueueItem,
    Run,
    RunState,
    StaleFence,
    Store,
    StoreError,
    TriggerKind,
)
from corral.store._notify import RUN_ENDED

__all__ = ["STORE_RETRY", "TIMEOUT_EXIT_CODE", "RunExecutor", "RunResult", "StoreGaveUp"]

_T = TypeVar("_T")

log = logging.getLogger("corral.run")

#: The exit code a timed-out run is recorded with (as `timeout(1)` uses).
TIMEOUT_EXIT_CODE = 124

#: How long the end (or the start) of a run is retried while the store fails, in seconds.
STORE_RETRY = 60.0


class StoreGaveUp(StoreError):
    """Recording a run's end failed past every retry: the run's lease is left to lapse,
    and recovery (on any scheduler) records the run lost and queues its item again."""


def failure_reason(exc: BaseException) -> str:
    """What a fault of corral's own while it executed a run means, for the run's error."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"the disk is full: corral could not write the run's files{where}: {exc.strerror}"
    if isinstance(exc, OSError):
        return f"corral could not write the run's files: {exc}"
    if isinstance(exc, StoreError):
        return f"the store failed while the run went on: {exc}"
    return f"corral failed while it executed the run: {type(exc).__name__}: {exc}"


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


def _redacted(outcome: _Outcome, secrets: Sequence[str]) -> _Outcome:
    """``outcome`` with the run's credential values in its error replaced by [REDACTED]:
    the error is stored and shown (stat, dashboard, MCP) and exported (telemetry), and a
    provider's answer quoted in it may echo the key it was sent."""
    if outcome.error is None or not secrets:
        return outcome
    return dataclasses.replace(outcome, error=Redactor(secrets).redact(outcome.error))


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
        store_retry: float = STORE_RETRY,
        reserve_reruns: bool = False,
    ) -> None:
        self.project = project
        #: Projects of bundles other than the current one that runs may run: a rollout's
        #: candidate (scheduler/rollouts.py), by bundle hash.
        self.variants: dict[str, Project] = {}
        self.store = store
        self.grace = grace
        #: How long the start and the end of a run are retried while the store fails.
        self.store_retry = store_retry
        #: Reruns are reserved for the owner of the run (`corral run` in the foreground).
        self.reserve_reruns = reserve_reruns
        self.link = link
        self.credentials = credentials
        self.hook_timeout = hook_timeout
        self.context_timeout = context_timeout
        self.log_limit = log_limit
        self._processes: dict[str, Process] = {}
        self._active: set[str] = set()
        self._stop_reasons: dict[str, str] = {}
        #: Runs stopped by a fault of corral's own (a full disk): recorded failed.
        self._failures: dict[str, str] = {}
        #: Runs stopped by a shutdown: their items go back to the queue.
        self._requeue: set[str] = set()
        self._exit_codes: dict[str, int] = {}
        self._exit_tasks: set[asyncio.Task[None]] = set()
        #: Runs whose lease this scheduler could not renew in time (self-fenced).
        self._fenced: dict[str, str] = {}
        #: Why this executor's leases may be lapsing (set by the scheduler), or None.
        self.lease_overdue: Callable[[], str | None] = lambda: None
        #: Built-in harness loops, by run; and model health shared by all of them.
        self._loops: dict[str, asyncio.Task[LoopResult]] = {}
        self._breakers: dict[str, Breaker] = {}
        #: This host's warm workspaces (a scheduler's); None: every run starts cold.
        self.warm: WarmPool | None = None
        self._taken: dict[str, WarmInstance] = {}
        if link is not None:
            link.on_exit = self.request_exit
            link.on_shutdown = self.request_shutdown

    def workdir(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "runs" / run_id

    def log_path(self, run_id: str) -> Path:
        return self.project.root / ".corral" / "logs" / f"{run_id}.log"

    async def stop(self, run_id: str, reason: str, *, requeue: bool = False) -> bool:
        """Stop a run this executor executes (TERM, then KILL); it is recorded as killed.

        Between its processes (hooks, the agent) the request is kept, and nothing more
        of the run starts. With ``requeue`` (a shutdown), the run's item goes back to
        the queue to be run again (``Store.release``) instead of being done.
        """
        if run_id not in self._active:
            return False
        # A shutdown gives back only work nobody asked to end: a run an operator killed,
        # or one that asked for al-exit, keeps that end.
        if requeue and run_id not in self._stop_reasons and run_id not in self._exit_codes:
            self._requeue.add(run_id)
        self._stop_reasons.setdefault(run_id, reason)
        await self._halt(run_id)
        return True

    def mark_fenced(self, run_id: str, reason: str) -> None:
        """Record that the run's processes were (or may have been) killed by the watchdog:
        its end hands the item back instead of recording an outcome."""
        if run_id in self._active:
            self._fenced.setdefault(run_id, reason)

    def _fail(self, run_id: str, reason: str) -> None:
        """End the run because of a fault of corral's own (a full disk): it is recorded
        failed with ``reason``; its processes are stopped as a kill stops them."""
        if run_id not in self._active or run_id in self._failures:
            return
        self._failures[run_id] = reason
        log.error(reason, extra={"action": "run_fault", "run_id": run_id})
        task = asyncio.create_task(self._halt(run_id), name=f"fault {run_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    async def fence_off(self, run_id: str, reason: str) -> bool:
        """Kill everything of a run whose lease could not be renewed in time, and record
        no outcome for it: its lease is handed back (the run becomes lost, its item is
        delivered again), not finalised as if nothing had happened."""
        if run_id not in self._active or run_id in self._stop_reasons:
            return False  # already being stopped: the kill is not repeated on every tick
        self._fenced.setdefault(run_id, reason)
        self._stop_reasons.setdefault(run_id, reason)
        await kill_run_async(run_id, scan=True)
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

    async def request_shutdown(self, run_id: str, reason: str) -> bool:
        """``al-shutdown``: kill a run this executor executes, as an operator's kill does
        (recorded killed, with ``al-shutdown: <reason>``; no post hook), a moment later
        so the command that asked can print its answer first."""
        if run_id not in self._active:
            return False
        self._stop_reasons.setdefault(run_id, f"al-shutdown: {reason}")

        async def stop_soon() -> None:
            await asyncio.sleep(0.1)
            await self._halt(run_id)

        task = asyncio.create_task(stop_soon(), name=f"al-shutdown {run_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)
        return True

    async def execute(self, claim: Claim, sink: Sink | None = None) -> RunResult:
        """Run a claimed item to its end and record the end.

        A fault of corral's own on the way (a full disk, a store error, a bug) ends the
        run's processes and records it failed with the reason. Only when recording the
        end fails past every retry does this raise (StoreGaveUp): the run's lease is then
        left to lapse (see ``Scheduler``), and recovery hands its item on.
        """
        run_id = claim.run.id
        self._active.add(run_id)
        try:
            try:
                return await self._execute(claim, sink)
            except (StoreGaveUp, StaleFence):
                raise
            except Exception as exc:
                log.exception(
                    "run %s failed inside corral; stopping it",
                    run_id,
                    extra={"action": "run_crashed", "run_id": run_id},
                )
                await self._halt(run_id)
                return await self._end(
                    claim.run, _Outcome(RunState.FAILED, None, failure_reason(exc))
                )
        finally:
            self._give_back(claim.run, succeeded=False)  # a run that ended some other way
            self._active.discard(run_id)
            self._fenced.pop(run_id, None)
            self._stop_reasons.pop(run_id, None)
            self._failures.pop(run_id, None)
            self._requeue.discard(run_id)
            self._exit_codes.pop(run_id, None)
            if self.link is not None:
                self.link.revoke(claim.run.id)
                # Only the dashboard's feed hears of the end itself; the run's keys and its
                # call were notified by the store as its end committed, the dispatcher by
                # the scheduler (a slot is free). Not everyone (D107).
                self.link.changes.notify(RUN_ENDED)

    async def _execute(self, claim: Claim, sink: Sink | None) -> RunResult:
        run = claim.run
        try:
            outcome = await self._outcome(run, sink)
        except asyncio.CancelledError:
            # Cancelled at any point: the process group is stopped (by _watch or the shell
            # runner) and the run recorded as killed.
            reason = self._stop_reasons.pop(run.id, "stopped by the operator")
            await asyncio.shield(self._end(run, _Outcome(RunState.KILLED, None, reason)))
            raise
        if outcome is None:  # fenced off while starting: nothing more to record
            self._give_back(run, succeeded=False)
            current = await self.store.get_run(run.id)
            return RunResult(current if current is not None else run)
        ended = await self._end(run, outcome)
        # After _end: the run's leftover processes are gone before another run may
        # take its workspace.
        self._give_back(run, succeeded=ended.run.state is RunState.SUCCEEDED)
        return ended

    def _give_back(self, run: Run, *, succeeded: bool) -> None:
        instance = self._taken.pop(run.id, None)
        if instance is None or self.warm is None:
            return
        try:
            kept = self.warm.give_back(self.project.agents.get(run.agent), instance, succeeded)
        except OSError as exc:
            log.warning("could not give back warm workspace %s: %s", instance.key, exc)
            return
        extra = {"action": "warm_returned" if kept else "warm_dropped", "run_id": run.id}
        log.info("warm workspace %s %s", instance.key, "kept" if kept else "deleted", extra=extra)

    def project_for(self, run: Run) -> Project:
        """The project a run runs: a rollout's candidate bundle when the claim assigned
        it to the canary (``variants``), else the current one."""
        if run.bundle is not None and run.bundle != self.project.bundle:
            return self.variants.get(run.bundle, self.project)
        return self.project

    async def _outcome(self, run: Run, sink: Sink | None) -> _Outcome | None:
        """Execute the run; how it ended (None: it was fenced off while it started)."""
        project = self.project_for(run)
        agent = project.agents.get(run.agent)
        if agent is None:
            return _Outcome(
                RunState.FAILED, None, f"agent '{run.agent}' is no longer in the project"
            )
        capped = (
            await self.store.daily_cap_refusal(run.agent)
            if agent.config.budget.daily_cost is not None
            or project.config.budget.daily_cost is not None
            else None
        )
        if capped is not None:  # queued before the day's spend reached a cap
            await self.store.record_usage(run.id, **_NOTHING_SPENT, budget="daily cost")
            return _Outcome(RunState.FAILED, None, capped)

        def log_failed(exc: OSError) -> None:  # the disk filled up under the run's log
            self._fail(run.id, failure_reason(exc))

        # The log is made with the run's files, in the preparation thread; its secrets
        # are known once the plan is.
        logfile = RunLog(self.log_path(run.id), sink, limit=self.log_limit, on_error=log_failed)
        instance = self._take_warm(run, agent)
        try:
            plan = await plan_run(
                project,
                self.store,
                run,
                agent,
                self.workdir(run.id) if instance is None else instance.path,
                link=self.link,
                credentials=self.credentials,
                then=logfile.open,
                ids_key=None if instance is None else instance.key,
            )
        except CorralError as exc:
            logfile.discard()
            return _Outcome(RunState.FAILED, None, str(exc))
        except BaseException:
            logfile.discard()
            raise
        logfile.secrets = plan.secrets
        async with logfile as runlog:
            outcome = await self._run_plan(plan, runlog)
            if outcome is None:
                return None
            await self._post_hooks(plan, runlog, outcome)
        return _redacted(outcome, plan.secrets)

    def _take_warm(self, run: Run, agent: Agent) -> WarmInstance | None:
        """A ready warm workspace of the agent for ``run``, when this host has one."""
        if self.warm is None or warm_settings(agent) is None:
            return None
        try:
            instance = self.warm.take(agent)
        except OSError as exc:  # a warm workspace is an optimisation: the run goes cold
            log.warning("could not take a warm workspace of %s: %s", agent.name, exc)
            return None
        if instance is not None:
            self._taken[run.id] = instance
        return instance

    async def _warm_or_refresh(self, plan: RunPlan, runlog: RunLog) -> _Outcome | None:
        """In a warm workspace, ``hooks.refresh`` (a failure fails the run, as a pre
        hook's does); in a cold one, ``hooks.warm`` first (a failure is logged and the
        run goes on, as it would have in a workspace that was never prepared)."""
        run, hooks = plan.run, plan.agent.config.hooks
        instance = self._taken.get(run.id)
        if instance is not None:
            await runlog.write(
                f"[corral] warm start: workspace {instance.key}, prepared "
                f"{instance.age():.0f} s ago, {instance.runs} runs before this one\n".encode()
            )
            log.info(
                "run %s starts warm in %s",
                run.id,
                instance.key,
                extra={"action": "run_warm", "run_id": run.id},
            )
            failure = await run_hooks(
                "refresh", hooks.refresh, self._shell(plan), runlog.write, timeout=self.hook_timeout
            )
            if failure is not None:
                return _Outcome(RunState.FAILED, failure.result.exit_code, str(failure))
            return None
        if hooks.warm:
            await runlog.write(b"[corral] cold start: no warm workspace ready; warm hooks first\n")
            await run_hooks(
                "warm", hooks.warm, self._shell(plan), runlog.write, timeout=self.hook_timeout
            )
        return None

    async def prepare_warm(self, agent: Agent, path: Path, key: str) -> bool:
        """Run ``hooks.warm`` of ``agent`` in the workspace ``path``, in the agent's
        runtime, with its credentials and environment as a run has them but no run:
        no gateway, no run secret, ``CORRAL_TRIGGER=warm``. Its output goes to
        ``.corral/logs/warm-AGENT.log`` (redacted). True when every hook succeeded."""
        now = datetime.now(UTC)
        run = Run(
            f"warm-{key}", agent.name, TriggerKind.MANUAL, None, None, RunState.STARTING,
            None, now, None, None, None, None, None, None, None, None, None, None, None,
            False, None,
        )  # fmt: skip
        logfile = RunLog(self.project.root / ".corral" / "logs" / f"warm-{agent.name}.log")
        try:
            plan = await plan_run(
                self.project,
                self.store,
                run,
                agent,
                path,
                link=None,
                credentials=self.credentials,
                then=logfile.open,
                ids_key=key,
            )
        except CorralError as exc:
            logfile.discard()
            log.warning("cannot prepare a warm workspace of %s: %s", agent.name, exc)
            return False
        env = {**plan.template.env, "CORRAL_TRIGGER": "warm"}
        plan = dataclasses.replace(plan, template=dataclasses.replace(plan.template, env=env))
        logfile.secrets = plan.secrets
        try:
            async with logfile as runlog:
                failure = await run_hooks(
                    "warm",
                    agent.config.hooks.warm,
                    self._shell(plan),
                    runlog.write,
                    timeout=self.hook_timeout,
                )
        finally:
            await asyncio.shield(kill_run_async(run.id))
            shutil.rmtree(path / ".corral", ignore_errors=True)
        return failure is None

    async def _run_plan(self, plan: RunPlan, runlog: RunLog) -> _Outcome | None:
        """Pre hooks, dynamic context, the agent itself; its outcome (None: fenced off)."""
        run, agent = plan.run, plan.agent
        warmed = await self._warm_or_refresh(plan, runlog)
        cut = self._cut_short(run.id)
        if cut is not None:
            return cut
        if warmed is not None:
            return warmed
        failure = await run_hooks(
            "pre",
            agent.config.hooks.pre,
            self._shell(plan),
            runlog.write,
            timeout=self.hook_timeout,
        )
        cut = self._cut_short(run.id)
        if cut is not None:
            return cut
        if failure is not None:
            return _Outcome(RunState.FAILED, failure.result.exit_code, str(failure))
        system_prompt = await inject_context(
            agent.skill.body, self._shell(plan), timeout=self.context_timeout
        )
        cut = self._cut_short(run.id)
        if cut is not None:
            return cut
        if agent.config.harness.type == "builtin":
            return await self._builtin(plan, runlog, system_prompt)
        try:
            process = await plan.runtime.launch(plan.launch(self.project_for(run), system_prompt))
        except CorralError as exc:
            return _Outcome(RunState.FAILED, None, str(exc))
        self._processes[run.id] = process
        try:
            started = await self._record_start(run, process.pid)
            if started != "recorded":
                await process.stop(self.grace)
                return None if started == "fenced" else started
            log.info("run started", extra={"action": "run_started", "run_id": run.id})
            outcome = await self._watch(process, agent.config.timeout, runlog)
        finally:
            self._processes.pop(run.id, None)
        return self._signalled(run.id, outcome)

    async def _builtin(self, plan: RunPlan, runlog: RunLog, system_prompt: str) -> _Outcome | None:
        """The built-in harness: the tool loop in this process, tools in the runtime."""
        run = plan.run
        started = await self._record_start(run, None)
        if started != "recorded":
            return None if started == "fenced" else started

        async def launch(argv: Sequence[str], stdin: bytes | None) -> Process:
            process = await plan.runtime.launch(plan.process(argv, stdin))
            self._processes[run.id] = process
            return process

        loop = asyncio.create_task(
            run_builtin(
                self.project_for(run),
                plan,
                system_prompt,
                runlog,
                launch,
                self._breakers,
                self.store,
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
        failed = self._failures.get(run_id)
        if failed is not None:
            return _Outcome(RunState.FAILED, outcome.exit_code, failed)
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

    def _cut_short(self, run_id: str) -> _Outcome | None:
        """Between the run's steps: its outcome if a fault or a stop request ended it."""
        failed = self._failures.get(run_id)
        if failed is not None:
            return _Outcome(RunState.FAILED, None, failed)
        if run_id in self._stop_reasons:
            return _Outcome(RunState.KILLED, None, self._stop_reasons.pop(run_id))
        return None

    async def _record_start(
        self, run: Run, pid: int | None
    ) -> Literal["recorded", "fenced"] | _Outcome:
        """STARTING -> RUNNING in the store, retried while the store fails: "fenced" when
        the run ended meanwhile (its lease lapsed, or it was killed), a failed outcome when
        the store kept failing."""
        host = socket.gethostname()
        try:
            await self._retrying(
                f"record the start of run {run.id}",
                lambda: self._mark_running(run, pid, host),
            )
        except StoreConflict as exc:
            log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
            return "fenced"
        except StoreGaveUp as exc:
            return _Outcome(RunState.FAILED, None, str(exc))
        return "recorded"

    async def _mark_running(self, run: Run, pid: int | None, host: str) -> None:
        try:
            await self.store.mark_run_running(run.id, pid=pid, host=host)
        except StoreError as exc:
            current = await self.store.get_run(run.id)
            if current is not None and current.state is not RunState.STARTING:
                raise StoreConflict(str(exc)) from exc  # it ended: nothing to retry
            raise

    async def _retrying(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """``op`` until it succeeds, retried with backoff for ``store_retry`` seconds while
        the store fails (busy, unreachable, a backend terminated, a full disk). A refusal
        of what the store holds (StaleFence, StoreConflict) is final; giving up raises
        StoreGaveUp."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.store_retry
        delay, attempts = 0.25, 0
        while True:
            attempts += 1
            try:
                return await asyncio.shield(op())
            except (StoreConflict, StaleFence):
                raise
            except StoreError as exc:
                if loop.time() + delay > deadline:
                    raise StoreGaveUp(
                        f"could not {what}: the store failed {attempts} times over "
                        f"{self.store_retry:g} s; the last error: {exc}"
                    ) from exc
                log.warning(
                    "could not %s (%s); trying again in %.1f s",
                    what,
                    exc,
                    delay,
                    extra={"action": "store_retry", "attempt": attempts},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _end(self, run: Run, outcome: _Outcome) -> RunResult:
        """Record the run's end: finalised, or given back to the queue when a shutdown
        stopped it (``stop(requeue=True)``) or its lease could not be renewed in time."""
        # Nothing of the run outlives it: its locks are released with the outcome.
        await asyncio.shield(kill_run_async(run.id))
        overdue = self.lease_overdue()
        if overdue is not None:  # its processes may have been killed by the watchdog
            self._fenced.setdefault(run.id, overdue)
        if run.id in self._fenced:
            return await self._release(run, self._fenced[run.id])
        if outcome.state is RunState.KILLED and run.id in self._requeue:
            return await self._release(run, outcome.error or "stopped by a shutdown")
        return await self._finalize(run, outcome)

    async def _release(self, run: Run, reason: str) -> RunResult:
        if run.fence is None:
            raise CorralError(f"run {run.id} has no fencing token; it was not claimed")
        fence = run.fence
        why = f"interrupted: {reason}; its item {run.item_id} was queued again"
        try:
            ended = await self._retrying(
                f"give run {run.id} back to the queue",
                lambda: self.store.release(run.id, fence=fence, reason=why),
            )
        except StaleFence as exc:
            log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
            current = await self.store.get_run(run.id)
            return RunResult(current if current is not None else run)
        extra = {"action": "run_requeued", "run_id": run.id, "item_id": run.item_id}
        log.info("run interrupted; its item was queued again", extra=extra)
        return RunResult(ended)

    async def _finalize(self, run: Run, outcome: _Outcome) -> RunResult:
        if run.fence is None:
            raise CorralError(f"run {run.id} has no fencing token; it was not claimed")
        fence = run.fence
        reserve = run.owner if self.reserve_reruns else None
        try:
            result = await self._retrying(
                f"record the end of run {run.id} ({outcome.state.value})",
                lambda: self.store.finalize(
                    run.id,
                    fence=fence,
                    state=outcome.state,
                    exit_code=outcome.exit_code,
                    error=outcome.error,
                    reserve_rerun_for=reserve,
                ),
            )
        except StaleFence as exc:
            log.warning(str(exc), extra={"action": "run_fenced_off", "run_id": run.id})
            current = await self.store.get_run(run.id)
            return RunResult(current if current is not None else run)
        extra = {"action": "run_finished", "run_id": run.id, "state": outcome.state.value}
        log.info("run finished", extra=extra)
        return RunResult(result.run, result.rerun_item)
