"""The agent API's handlers and routes.

Every request carries the run's secret (``Authorization: Bearer <secret>``); a wrong or
missing one is answered 403 and changes nothing. A run acts only for itself: the run is
whoever the secret names, never a field of the request. ``LockFastPath`` checks the
secret before a byte of the body is read and hands the run on (``RUN_SCOPE_KEY``);
``current_run`` checks it itself only for an app served without that middleware.

What a run sends that is kept or shown to someone else (call context, status text,
``al-return`` value) is redacted first: the run's secret and its credentials' values
become ``[REDACTED]``, as in its log. A lock key cannot be redacted without making it
another key, so a key holding one of those values is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.credentials import CredentialStore, LoadedCredential
from corral.credentials.redact import Redactor
from corral.errors import CorralError
from corral.gateway.agent_api._errors import AgentApiError, RunEnded, answer
from corral.gateway.agent_api._keys import validate_key
from corral.gateway.agent_api._models import (
    DEFAULT_LOCK_WAIT,
    MAX_CONTEXT_BYTES,
    MAX_RETURN_BYTES,
    NOT_FOUND_CALL,
    POLL_SECONDS,
    AcquireBody,
    CallBody,
    EmptyBody,
    ExitBody,
    LockBody,
    ReturnBody,
    StatusBody,
    WaitBody,
    call_status,
    deadlock_answer,
    grant_answer,
    held_answer,
    iso,
    shutdown_reason,
)
from corral.gateway.agent_api._tasks import (
    TaskBody,
    TaskClaimBody,
    TaskCompleteBody,
    TaskFailBody,
    TaskRoutes,
)
from corral.gateway.metrics import count_lock
from corral.inert import inert
from corral.project import Project
from corral.scheduler.agentlink import AgentLink, RunRef, hash_secret
from corral.scheduler.prepare import implied_keys
from corral.store import CallRefusal, Deadlock, LockGrant, LockHeld, RunState, StoreError
from corral.store.protocols import (
    CallStore,
    ControlStore,
    LeaseStore,
    LockStore,
    RunStore,
    TaskStore,
)

__all__ = ["RUN_SCOPE_KEY", "AgentApi", "Caller", "agent_router", "current_run"]

log = logging.getLogger(__name__)

#: Where ``LockFastPath`` leaves the authenticated run in the ASGI scope.
RUN_SCOPE_KEY = "corral.agent_run"
_LIVE = (RunState.STARTING, RunState.RUNNING)
#: Redactors kept for runs another process started (their credentials read once).
_FOREIGN_REDACTORS = 1024

_bearer = HTTPBearer(auto_error=False, description="The run's secret (CORRAL_RUN_SECRET)")


def missing_secret() -> AgentApiError:
    return AgentApiError(
        403, {"ok": False, "error": "missing run secret (Authorization: Bearer ...)"}
    )


async def current_run(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> RunRef:
    """The run whose secret the request carries; 403 when there is none or it is wrong."""
    checked = request.scope.get(RUN_SCOPE_KEY)
    if isinstance(checked, RunRef):
        return checked
    if credentials is None or not credentials.credentials.strip():
        raise missing_secret()
    api: AgentApi = request.app.state.agent_api
    return await api.authenticate(credentials.credentials.strip())


Caller = Annotated[RunRef, Depends(current_run)]


class AgentStore(LockStore, CallStore, RunStore, LeaseStore, ControlStore, TaskStore, Protocol):
    """What the agent API asks of the store: locks, calls, the run's own signals and
    secret, kill and rerun requests, the audit entry of a run's kill, and the task
    board's claims."""


class AgentApi:
    """The agent API's handlers over ``store`` for runs of ``project`` in ``link``."""

    def __init__(self, project: Project, store: AgentStore, link: AgentLink) -> None:
        self.project = project
        self.store = store
        self.link = link
        self.ttl = float(project.config.resource_lock_timeout)
        self._foreign: OrderedDict[str, Redactor] = OrderedDict()
        #: Runs another process started, by the hash of their secret, once seen live: a
        #: secret names one run for good, so who it is need not be read again. Whether it
        #: is still live is never taken from here (see ``authenticate_lock_request``).
        self._foreign_refs: OrderedDict[str, RunRef] = OrderedDict()

    async def authenticate(self, secret: str) -> RunRef:
        ref = self.link.lookup(secret)
        if ref is not None:
            return dataclasses.replace(ref, secret=secret)
        digest = hash_secret(secret)
        run = await self.store.run_for_secret(digest)
        if run is not None and run.state not in _LIVE:
            self._foreign_refs.pop(digest, None)
            raise RunEnded(run.id, run.state.value)
        if run is None:
            raise AgentApiError(403, {"ok": False, "error": "invalid run secret"})
        if run.id not in self._foreign:
            await self._protect_foreign(run.id, run.agent)
        found = RunRef(run.id, run.agent, run.trigger.value, digest)
        self._foreign_refs[digest] = found
        self._foreign_refs.move_to_end(digest)
        while len(self._foreign_refs) > _FOREIGN_REDACTORS:
            self._foreign_refs.popitem(last=False)
        return dataclasses.replace(found, secret=secret)

    async def authenticate_lock_request(self, secret: str) -> tuple[RunRef, bool]:
        """The run of a lock request (rlock, runlock, rlock-heartbeat), and whether the
        request must still prove the run is live.

        A run this process started is known live from memory (its secret is revoked when
        it ends). A run another process started costs a store read per request in
        ``authenticate``; once seen live it is taken from memory here, and True says its
        liveness is unchecked: the request's own store call then decides. A try-lock
        reads the run's state in the same transaction (an ended run is refused), and a
        release or heartbeat can succeed only for a lock the run holds, which no ended run
        does (its end releases them in the same transaction). Any other answer must be
        preceded by ``authenticate`` again (``LockFastPath`` does), so an ended run is
        refused at once, with the answer it always had.
        """
        ref = self.link.lookup(secret)
        if ref is not None:
            return dataclasses.replace(ref, secret=secret), False
        known = self._foreign_refs.get(hash_secret(secret))
        if known is None or known.run_id not in self._foreign:  # its redactor went too
            return await self.authenticate(secret), False
        return dataclasses.replace(known, secret=secret), True

    async def _protect_foreign(self, run_id: str, agent_name: str) -> None:
        """A run another process started (so ``link`` does not know its credentials):
        read its agent's credentials here, to redact their values from what it sends."""
        agent = self.project.agents.get(agent_name)
        names = list(agent.config.credentials) if agent is not None else []
        # The model keys its models imply are in the run too (a coding-agent CLI reads its
        # key from the environment): redacted like the named ones, when stored.
        implied = implied_keys(self.project, agent) if agent is not None else []
        try:
            loaded = await asyncio.to_thread(_resolve_all, names, implied)
        except (CorralError, OSError) as exc:
            log.warning(
                "cannot read the credentials of run %s to redact what it sends (%s); "
                "only its secret is redacted",
                run_id,
                type(exc).__name__,
            )
            loaded = []
        self._foreign[run_id] = Redactor(v for credential in loaded for v in credential.secrets())
        while len(self._foreign) > _FOREIGN_REDACTORS:
            self._foreign.popitem(last=False)

    def redact(self, run: RunRef, text: str) -> str:
        """``text`` from ``run`` as it may be kept or shown: its secret and its
        credentials' values replaced by ``[REDACTED]``."""
        foreign = self._foreign.get(run.run_id)
        if foreign is not None:
            text = foreign.redact(text)
        return self.link.redact(run, text)

    def lock_key(self, run: RunRef, key: str) -> str:
        """``key`` when it is a valid lock key that shows nothing ``run`` must hide."""
        validate_key(key)
        if self.redact(run, key) != key:
            raise AgentApiError(
                400,
                {
                    "ok": False,
                    "error": "invalid resource key: it contains this run's secret or the value "
                    "of one of its credentials, and lock keys are shown to operators",
                },
            )
        return key

    # -- locks -------------------------------------------------------------------------

    async def acquire(self, body: AcquireBody, run: Caller) -> JSONResponse:
        key = self.lock_key(run, body.key)
        if body.wait:
            timeout = DEFAULT_LOCK_WAIT if body.timeout is None else body.timeout
            return await self._wait_for_lock(key, run, timeout)
        result = await self.store.acquire_lock(key, run.run_id, ttl_seconds=self.ttl)
        if isinstance(result, LockGrant):
            count_lock("acquire", "refreshed" if result.refreshed else "granted")
            return answer(200, grant_answer(result))
        if isinstance(result, Deadlock):
            return self._deadlock(run, result)
        count_lock("acquire", "held")
        return answer(409, held_answer(result))

    def _deadlock(self, run: RunRef, deadlock: Deadlock) -> JSONResponse:
        count_lock("acquire", "deadlock")
        log.warning(
            "possible deadlock: run %s (%s) closes the cycle %s",
            run.run_id,
            run.agent,
            inert(" -> ".join((*deadlock.cycle, deadlock.cycle[0]))),
            extra={"action": "lock_deadlock", "run_id": run.run_id},
        )
        return answer(409, deadlock_answer(deadlock))

    async def release(self, body: LockBody, run: Caller) -> JSONResponse:
        key = self.lock_key(run, body.key)
        if await self.store.release_lock(key, run.run_id):
            self.link.changes.notify(f"lock:{key}")
            count_lock("release", "released")
            return answer(200, {"ok": True})
        return await self._not_holder("release", key)

    async def heartbeat(self, body: LockBody, run: Caller) -> JSONResponse:
        key = self.lock_key(run, body.key)
        expires = await self.store.heartbeat_lock(key, run.run_id, ttl_seconds=self.ttl)
        if expires is not None:
            count_lock("heartbeat", "extended")
            return answer(200, {"ok": True, "key": key, "expiresAt": iso(expires)})
        # The run believed it held the key: it expired and went to another run, was
        # released by an operator, or was never taken. Its own status and exit code.
        holder = await self.store.get_lock(key)
        count_lock("heartbeat", "lost")
        lost: dict[str, Any] = {"ok": False, "reason": "lock lost", "key": key}
        if holder is not None:
            lost["holder"] = holder.run_id
        return answer(410, lost)

    async def my_locks(self, run: Caller) -> JSONResponse:
        mine = [lock for lock in await self.store.list_locks() if lock.run_id == run.run_id]
        locks = [
            {
                "key": lock.key,
                "token": lock.token,
                "heldSince": iso(lock.acquired_at),
                "expiresAt": iso(lock.expires_at),
            }
            for lock in mine
        ]
        return answer(200, {"ok": True, "locks": locks})

    async def _not_holder(self, op: str, key: str) -> JSONResponse:
        if await self.store.get_lock(key) is None:
            count_lock(op, "not_found")
            return answer(404, {"ok": False, "reason": "lock not found"})
        count_lock(op, "not_holder")
        return answer(409, {"ok": False, "reason": "not the lock holder"})

    async def _wait_for_lock(self, key: str, run: RunRef, timeout: float) -> JSONResponse:
        run_id = run.run_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The store's deadline outlives ours a little: a stale waiter is skipped by handovers.
        wait_seconds = timeout + 2 * POLL_SECONDS
        finished = False
        topics = [f"lock:{key}"]
        try:
            while True:
                # Listening before looking: a release that lands while the store is asked
                # wakes the wait below at once instead of leaving it to the poll.
                watch = self.link.changes.watch(topics)
                result = await self.store.wait_for_lock(
                    key, run_id, ttl_seconds=self.ttl, wait_seconds=wait_seconds
                )
                if not isinstance(result, LockHeld):
                    finished = True
                    if isinstance(result, Deadlock):
                        return self._deadlock(run, result)
                    count_lock("acquire", "refreshed" if result.refreshed else "granted")
                    return answer(200, grant_answer(result))
                left = deadline - loop.time()
                if left <= 0:
                    finished = True
                    grant = await self._stop_waiting(key, run_id)
                    if grant is not None:  # a release handed it over at the deadline
                        count_lock("acquire", "granted")
                        return answer(200, grant_answer(grant))
                    count_lock("acquire", "timed_out")
                    held = held_answer(result)
                    held["reason"] = f"timed out after {timeout:g} s waiting for the lock"
                    return answer(409, held)
                await watch.wait(min(left, POLL_SECONDS))
        finally:
            if not finished:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self.store.cancel_lock_wait(key, run_id))

    async def _stop_waiting(self, key: str, run_id: str) -> LockGrant | None:
        """End a wait that timed out; the key if a release handed it to ``run_id`` after
        its last check (it then holds it, and is told so rather than refused)."""
        try:
            if await asyncio.shield(self.store.cancel_lock_wait(key, run_id)):
                return None
            lock = await self.store.get_lock(key)
        except StoreError:  # answered as timed out, as before; the wait lapses by itself
            return None
        if lock is None or lock.run_id != run_id:
            return None
        return LockGrant(
            key=key,
            run_id=run_id,
            token=lock.token,
            acquired_at=lock.acquired_at,
            expires_at=lock.expires_at,
        )

    # -- calls -------------------------------------------------------------------------

    async def call(self, body: CallBody, run: Caller) -> JSONResponse:
        _limit("the call context", body.context, MAX_CONTEXT_BYTES, "write it to a file")
        # The context is kept in the call, its queue item and the callee's run, and put in
        # the callee's prompt: none of them may carry the caller's secret or credentials.
        # An unknown agent's name is recorded with the refusal, so it is redacted too.
        context = self.redact(run, body.context)
        agent = self.redact(run, body.agent)
        depth = self.project.config.max_call_depth
        made = await self.store.create_call(run.run_id, agent, context, max_depth=depth)
        if isinstance(made, CallRefusal):
            return answer(409, {"ok": False, "error": made.reason})
        if self.link.on_queued is not None:
            self.link.on_queued()
        return answer(200, {"ok": True, "callId": made.id})

    async def check(self, call_id: str, run: Caller) -> JSONResponse:
        found = await self.store.get_call(call_id, caller_run_id=run.run_id)
        if found is None:
            return answer(404, dict(NOT_FOUND_CALL))
        return answer(200, call_status(found))

    async def wait(self, body: WaitBody, run: Caller) -> JSONResponse:
        ids = list(dict.fromkeys(body.callIds))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.timeout
        topics = [f"call:{call_id}" for call_id in ids]
        try:
            while True:
                watch = self.link.changes.watch(topics)  # before looking: see _wait_for_lock
                calls = [await self.store.get_call(c, caller_run_id=run.run_id) for c in ids]
                states = {
                    call_id: dict(NOT_FOUND_CALL) if call is None else call_status(call)
                    for call_id, call in zip(ids, calls, strict=True)
                }
                if any(call is None for call in calls):
                    return answer(404, states)
                if all(call is not None and call.state.is_final for call in calls):
                    return answer(200, states)
                left = deadline - loop.time()
                if left <= 0:
                    return answer(202, states)
                deadlock = await self.store.wait_on_calls(run.run_id, ids, waiting=True)
                if deadlock is not None:
                    return answer(409, deadlock_answer(deadlock))
                await watch.wait(min(left, POLL_SECONDS))
        finally:
            with contextlib.suppress(StoreError):
                await asyncio.shield(self.store.wait_on_calls(run.run_id, ids, waiting=False))

    # -- signals -----------------------------------------------------------------------

    async def give_back(self, body: ReturnBody, run: Caller) -> JSONResponse:
        _limit("the al-return value", body.value, MAX_RETURN_BYTES, "write it to a file")
        await self.store.set_return_value(run.run_id, self.redact(run, body.value))
        given: dict[str, Any] = {"ok": True}
        if run.trigger != "call":
            given["note"] = "this run was not called by an agent; the value is kept on it"
        return answer(200, given)

    async def status(self, body: StatusBody, run: Caller) -> JSONResponse:
        await self.store.set_status(run.run_id, self.redact(run, body.text))
        return answer(200, {"ok": True})

    async def rerun(self, run: Caller, body: EmptyBody | None = None) -> JSONResponse:
        await self.store.request_rerun(run.run_id)
        if run.trigger in ("schedule", "manual"):
            return answer(200, {"ok": True})
        note = f"{run.trigger} runs are not rerun; only scheduled and manual runs are"
        return answer(200, {"ok": True, "rerun": False, "note": note})

    async def exit(self, run: Caller, body: ExitBody | None = None) -> JSONResponse:
        code = 15 if body is None else body.code
        await self.store.request_exit(run.run_id, code)
        if self.link.on_exit is not None:
            await self.link.on_exit(run.run_id, code)
        return answer(200, {"ok": True, "code": code})

    async def shutdown(self, run: Caller, request: Request) -> JSONResponse:
        """``al-shutdown``: the run asks to be killed now (a run that detects credential
        exfiltration is told to). Any authenticated request kills: its body is read
        whatever its shape (:func:`shutdown_reason`), and the kill comes first, before
        the log and the audit. The run ends killed, as an operator's kill ends it."""
        return await self.shut_down(run, shutdown_reason(await request.body()))

    async def shut_down(self, run: RunRef, reason: str) -> JSONResponse:
        """Kill ``run`` for ``reason`` (redacted here), then log and audit it."""
        reason = self.redact(run, reason)
        stopping = self.link.on_shutdown is not None and await self.link.on_shutdown(
            run.run_id, reason
        )
        if not stopping:
            # Another process executes the run: ask its scheduler, through the store.
            await self.store.request_kill(run.run_id)
        log.error(
            "run %s (%s) asked to be shut down: %s",
            run.run_id,
            run.agent,
            inert(reason),
            extra={"action": "run_shutdown", "run_id": run.run_id},
        )
        detail = {"agent": run.agent, "reason": reason}
        await self.store.audit(f"run:{run.run_id}", "run.shutdown", run.run_id, detail)
        return answer(200, {"ok": True, "killed": True, "runId": run.run_id})


def _resolve_all(names: list[str], implied: list[str]) -> list[LoadedCredential]:
    """The named credentials, and those of ``implied`` that are stored."""
    store = CredentialStore()
    return store.resolve(names) + store.resolve(implied, missing_ok=True)


def _limit(what: str, text: str, limit: int, instead: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise AgentApiError(
            413,
            {
                "ok": False,
                "error": f"{what} is {size} bytes; the limit is {limit} bytes (1 MiB): "
                f"{instead} and pass its path instead",
            },
        )


def agent_router(api: AgentApi) -> APIRouter:
    """The routes of ``api`` under /agent; the app must hold ``api`` in
    ``app.state.agent_api``."""
    router = APIRouter(prefix="/agent", tags=["agent"])
    routes: list[tuple[str, str, Callable[..., Awaitable[JSONResponse]], str]] = [
        ("POST", "/locks/acquire", api.acquire, "rlock: take a resource lock"),
        ("POST", "/locks/release", api.release, "runlock: release a resource lock"),
        ("POST", "/locks/heartbeat", api.heartbeat, "rlock-heartbeat: reset a lock's TTL"),
        ("GET", "/locks", api.my_locks, "The locks this run holds"),
        ("POST", "/calls", api.call, "al-subagent: call another agent"),
        ("POST", "/calls/wait", api.wait, "al-subagent-wait: wait for calls to end"),
        ("GET", "/calls/{call_id}", api.check, "al-subagent-check: where a call is"),
        ("POST", "/return", api.give_back, "al-return: the value this run answers with"),
        ("POST", "/status", api.status, "al-status: the text shown while this run works"),
        ("POST", "/rerun", api.rerun, "al-rerun: run again after this run succeeds"),
        ("POST", "/exit", api.exit, "al-exit: end this run with an exit code"),
        ("POST", "/shutdown", api.shutdown, "al-shutdown: kill this run now, with a reason"),
    ]
    tasks = TaskRoutes(api)

    async def task_claim(body: TaskClaimBody, run: Caller) -> JSONResponse:
        return await tasks.claim(body, run)

    async def task_heartbeat(body: TaskBody, run: Caller) -> JSONResponse:
        return await tasks.heartbeat(body, run)

    async def task_complete(body: TaskCompleteBody, run: Caller) -> JSONResponse:
        return await tasks.complete(body, run)

    async def task_fail(body: TaskFailBody, run: Caller) -> JSONResponse:
        return await tasks.fail(body, run)

    async def task_release(body: TaskBody, run: Caller) -> JSONResponse:
        return await tasks.release(body, run)

    routes += [
        ("POST", "/tasks/claim", task_claim, "task-claim: claim the best ready task"),
        ("POST", "/tasks/heartbeat", task_heartbeat, "task-heartbeat: extend a claim"),
        ("POST", "/tasks/complete", task_complete, "task-complete: a claimed task is done"),
        ("POST", "/tasks/fail", task_fail, "task-fail: a claimed task failed"),
        ("POST", "/tasks/release", task_release, "task-release: put a claimed task back"),
    ]
    for method, path, handler, summary in routes:
        router.add_api_route(path, handler, methods=[method], summary=summary)
    return router
