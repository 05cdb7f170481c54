"""The runner API for runs: a runner asks for work and reports on the runs it was given.

    POST /fleet/v1/work                  {free, wait}: long poll (<= 25 s) for up to
                                         ``free`` claims of the agents whose ``runsOn``
                                         labels the runner has
    POST /fleet/v1/runs/{id}/secret      {fence, hash}: the run secret's hash
    POST /fleet/v1/runs/{id}/running     {fence, pid, host}: the run's process started
    POST /fleet/v1/runs/{id}/log?fence=N the run's output (raw bytes, appended to its log)
    POST /fleet/v1/runs/{id}/usage       {fence, ...}: what a built-in run used so far
    POST /fleet/v1/runs/{id}/cap         {fence}: why the run may not start (daily cost)
    POST /fleet/v1/runs/{id}/permit      {fence, bucket, provider, limits}: a model
                                         request permit of the provider key's bucket for
                                         the run (its agent's fair turn; the request
                                         waits for it up to 2 s), or how long to wait
                                         before asking again
    POST /fleet/v1/runs/{id}/tokens      {..., tokens}: what a request used, charged
    POST /fleet/v1/runs/{id}/throttle    {..., retryAfter}: the provider answered 429:
                                         the bucket is closed for everyone until then
    GET  /fleet/v1/runs/{id}             the run as the store holds it
    POST /fleet/v1/runs/{id}/end         {fence, state, exitCode, error}: finalised with
                                         the fence
    POST /fleet/v1/runs/{id}/release     {fence, reason}: ended, its item queued again

Every call about a run is refused unless the run was claimed by this runner (403), and
every write unless the runner still holds it with that fence (409): a runner whose lease
lapsed, or that was frozen and thawed, can change nothing of a run that was handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.credentials import CredentialStore
from corral.credentials.errors import CredentialError
from corral.engine import fleet_runs
from corral.engine.actions import ActionError
from corral.engine.fleet import WarmReports
from corral.errors import StoreError
from corral.gateway.edge import WholeNumber
from corral.gateway.fleet._runner_api import Me, refusals
from corral.llm.ratelimit import limits_for
from corral.locate import open_private, private_dirs
from corral.scheduler import anomalies, rollouts
from corral.scheduler.service import Scheduler
from corral.store import BucketLimits, Claim, Run, RunnerState, RunState, StaleFence
from corral.store._notify import QUEUE

__all__ = ["runs_router"]

log = logging.getLogger("corral.fleet")

#: How often a waiting request for work looks at the queue when nothing woke it: on
#: PostgreSQL with its listener connected every process's enqueue wakes it, so the poll
#: is only the fallback for a lost notice; on SQLite, other processes' enqueues are seen
#: only by polling.
_POLL = 0.5
#: How long a waiting request for work lets another runner's go first when that runner
#: reported a ready warm workspace of an agent both may run and this one reported none.
WARM_HEAD_START = 0.25
_POLL_NOTIFIED = 2.0


class _NotActive(Exception):
    """The runner is no longer active (its state): its request for work ends empty."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


async def _claim_if_active(
    store: Any,
    runner_id: str,
    free: int,
    bundle: str,
    agents: list[str],
    hashes: list[str],
    started: float,
) -> list[Claim]:
    """The runner's claim, its state read again right before it once the request has
    waited: one drained (or cordoned, revoked) while its request for work waits gets no
    new work through it. A claim at the request's start (within a second of the state
    read that let it in) needs no second read."""
    if asyncio.get_running_loop().time() - started > 1.0:
        current = await store.get_runner(runner_id)
        if current is None or current.state is not RunnerState.ACTIVE:
            raise _NotActive(current.state.value if current is not None else "revoked")
    claims: list[Claim] = await store.claim(
        runner_id,
        lease_seconds=fleet_runs.LEASE_SECONDS,
        limit=free,
        bundle=bundle,
        agents=agents,
        runner=True,
        secret_hashes=hashes,
    )
    return claims


class _EmptyClaims:
    """What this process's waiting requests for work learnt: the agent sets whose last
    claim came back empty, and when.

    A queue notice wakes every waiting request; without this, each would claim, and all
    but a few would find nothing (one statement each, on the store, per notice and per
    waiting runner). With it, a waiter skips its claim when a claim for the same agents
    found nothing since the last notice (``generation``) and within the poll period;
    runners with the same labels share one claim's answer. Correctness does not rest on
    it: a notice between that claim and now moves the generation on, and the poll period
    bounds how long a lost notice can be missed, as before."""

    def __init__(self) -> None:
        self.generation = 0
        self._empty: dict[frozenset[str], tuple[int, float]] = {}
        self._turns: dict[frozenset[str], asyncio.Lock] = {}

    def turn(self, agents: frozenset[str]) -> asyncio.Lock:
        """The lock the waiters for ``agents`` claim under, one after the other: when an
        item arrives, the first claims it, the second finds nothing and says so, and the
        rest skip, instead of every waiter claiming at once."""
        lock = self._turns.get(agents)
        if lock is None:
            lock = self._turns[agents] = asyncio.Lock()
        return lock

    def notice(self) -> None:
        self.generation += 1
        self._empty.clear()

    async def claim(
        self,
        agents: frozenset[str],
        period: float,
        claim: Callable[[], Awaitable[list[Claim]]],
    ) -> list[Claim]:
        """``claim()``'s answer, or nothing without calling it when a claim for the same
        agents found nothing since the last notice and within ``period``. One claim at
        a time per set of agents: a waiter that gets its turn after another found
        nothing skips its own."""
        loop = asyncio.get_running_loop()
        if self.fresh(agents, loop.time(), period):
            return []
        async with self.turn(agents):
            if self.fresh(agents, loop.time(), period):
                return []
            generation = self.generation
            claims = await claim()
            if not claims:
                self.found_nothing(agents, generation, loop.time())
            return claims

    def fresh(self, agents: frozenset[str], now: float, period: float) -> bool:
        seen = self._empty.get(agents)
        return seen is not None and seen[0] == self.generation and now - seen[1] < period

    def found_nothing(self, agents: frozenset[str], generation: int, now: float) -> None:
        if generation == self.generation:
            self._empty[agents] = (generation, now)


#: How long a permit request may wait on the control plane for the run's turn before it
#: answers how long is left (the runner asks again).
PERMIT_HOLD = 2.0


#: The log route's body: the run's output as it came, any bytes.
_RAW_BODY = {
    "requestBody": {
        "required": False,
        "description": "The run's output, appended to its log as it is",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WorkBody(_Body):
    free: WholeNumber = Field(ge=0, le=1024, description="Runs the runner can take now")
    wait: float = Field(default=fleet_runs.MAX_WAIT, ge=0, le=fleet_runs.MAX_WAIT)
    bundles: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default=[], max_length=256
    )
    secret_hashes: list[Annotated[str, Field(pattern="^[0-9a-f]{64}$")]] = Field(
        default=[],
        max_length=1024,
        alias="secretHashes",
        description=(
            "SHA-256 hashes (hex) of run secrets the runner made ahead, one per run it "
            "may be given: the claim stores the i-th with the i-th run, so a run's secret "
            "costs no request of its own; each answered run names the hash it holds"
        ),
    )

    @field_validator("secret_hashes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("secretHashes names a hash twice: each run needs its own secret")
        return value


class FenceBody(_Body):
    fence: WholeNumber = Field(ge=0, le=2**62)


class SecretBody(FenceBody):
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the secret")


class RunningBody(FenceBody):
    pid: int | None = Field(default=None, ge=0, le=2**31)
    host: str = Field(default="", max_length=253)


#: The most tokens of one kind a run may report: far past any run, and within what both
#: stores' integers hold (a larger number was a 500 from the store).
MAX_TOKENS = 2**53
#: The most dollars a run may report.
MAX_COST = 1e9


class UsageBody(FenceBody):
    input_tokens: WholeNumber = Field(alias="inputTokens", ge=0, le=MAX_TOKENS)
    output_tokens: WholeNumber = Field(alias="outputTokens", ge=0, le=MAX_TOKENS)
    cache_read_tokens: WholeNumber = Field(alias="cacheReadTokens", ge=0, le=MAX_TOKENS)
    cache_write_tokens: WholeNumber = Field(alias="cacheWriteTokens", ge=0, le=MAX_TOKENS)
    cost_usd: float | None = Field(default=None, alias="costUsd", ge=0, le=MAX_COST)
    budget: str | None = Field(default=None, max_length=64)


class BucketBody(FenceBody):
    bucket: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}:[0-9a-f]{16}$",
        description="The provider key's bucket: provider:<16 hex of sha256(base URL, key)>",
    )
    provider: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    requests_per_second: float | None = Field(default=None, alias="requestsPerSecond", gt=0, le=1e6)
    tokens_per_second: float | None = Field(default=None, alias="tokensPerSecond", gt=0, le=1e9)
    burst: WholeNumber = Field(default=1, ge=1, le=1_000_000)
    window: float = Field(default=60.0, gt=0, le=86_400)

    def limits(self, project: Any) -> BucketLimits:
        """The control plane's ``[providers.<name>]`` when it has the table (every
        asker of a bucket then counts with the same limits), else the runner's (its
        bundle's, e.g. a rollout's candidate)."""
        config = project.config.providers.get(self.provider)
        if config is not None:
            return limits_for(config)
        return BucketLimits(
            requests_per_second=self.requests_per_second,
            tokens_per_second=self.tokens_per_second,
            burst=self.burst,
            window=self.window,
        )

    @model_validator(mode="after")
    def _named(self) -> BucketBody:
        if not self.bucket.startswith(f"{self.provider}:"):
            raise ValueError(f"bucket {self.bucket!r} is not provider {self.provider!r}'s")
        return self


#: The most tokens one model request may charge to a bucket (far above any context
#: window): one report cannot sink a shared bucket for everyone.
MAX_REQUEST_TOKENS = 10_000_000
#: The longest a 429 reported by a runner may close a shared bucket (s).
MAX_RETRY_AFTER = 3_600


class TokensBody(BucketBody):
    tokens: WholeNumber = Field(ge=0, le=MAX_REQUEST_TOKENS)


class ThrottleBody(BucketBody):
    retry_after: float | None = Field(default=None, alias="retryAfter", ge=0, le=MAX_RETRY_AFTER)


class EndBody(FenceBody):
    state: Literal["succeeded", "failed", "timed_out", "killed"]
    exit_code: int | None = Field(default=None, alias="exitCode", ge=-(2**31), le=2**31)
    error: str | None = Field(default=None, max_length=16_000)


class ReleaseBody(FenceBody):
    reason: str = Field(min_length=1, max_length=4000)


class WorkAnswer(BaseModel):
    ok: Literal[True]
    state: str = Field(description="The runner's state: no work unless active")
    runs: list[dict[str, Any]] = Field(description="The runs given to it, each a claim")
    waiting: str | None = Field(default=None, description="Why no run can be given yet")


class RunAnswer(BaseModel):
    ok: Literal[True]
    run: dict[str, Any] | None


class LogAnswer(BaseModel):
    ok: Literal[True]
    bytes: int


class CapAnswer(BaseModel):
    ok: Literal[True]
    refusal: str | None = Field(description="Why the run may not start now; null: it may")


class WaitAnswer(BaseModel):
    ok: Literal[True]
    wait: float = Field(
        description="Seconds to wait before asking again (permit: 0 means granted; "
        "throttle: until the bucket opens)"
    )


class EndAnswer(BaseModel):
    ok: Literal[True]
    run: dict[str, Any]
    item: dict[str, Any]
    rerun: dict[str, Any] | None


#: What every route about one run may refuse.
_RUN_REFUSALS = refusals(401, 403, 404, 409, 413, 422, 503)


def _answers(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **_RUN_REFUSALS}


def runs_router(scheduler: Scheduler) -> APIRouter:
    """The routes of runs on runners over ``scheduler`` (its project and store)."""
    router = APIRouter(prefix="/fleet/v1", tags=["fleet"])
    _work_route(router, scheduler)
    _report_routes(router, scheduler)
    _bucket_routes(router, scheduler)
    _end_routes(router, scheduler)
    return router


def _owner_check(scheduler: Scheduler) -> Any:
    store = scheduler.store

    async def own(me: Me, run_id: str, fence: int | None) -> Run:
        """The run, when it is ``me``'s (403 otherwise) and, with ``fence``, still held
        by it with that fence (409 otherwise)."""
        run = await store.get_run(run_id)
        if run is None or run.owner != me.id:
            raise ActionError(
                403 if run is not None else 404,
                f"run {run_id} is not a run of runner {me.id}"
                if run is not None
                else f"no run {run_id}",
            )
        if fence is not None and not await store.runner_holds(me.id, run_id, fence):
            raise ActionError(409, _stale(run, fence))
        return run

    return own


def _work_route(router: APIRouter, scheduler: Scheduler) -> None:  # noqa: C901 - one long poll
    store = scheduler.store
    empty = _EmptyClaims()
    store.changes.subscribe(QUEUE, empty.notice)
    scheduler.wake_listeners.add(empty.notice)
    #: The requests for work waiting in this process: the runner and the agents it may run.
    waiting: dict[object, tuple[str, frozenset[str]]] = {}

    def head_start(runner_id: str, agents: frozenset[str], warm: WarmReports | None) -> float:
        """``WARM_HEAD_START`` when another waiting runner has a ready warm workspace of
        an agent this one may run and has none of (as their heartbeats last said): that
        one claims first. Else 0."""
        if warm is None:
            return 0.0
        mine = warm.of(runner_id) or {}
        wanted = {a for a in agents if mine.get(a, 0) <= 0}
        for other, theirs in waiting.values():
            if other != runner_id and any(
                (warm.of(other) or {}).get(a, 0) > 0 for a in wanted & theirs
            ):
                return WARM_HEAD_START
        return 0.0

    @router.post(
        "/work",
        summary="Ask for work: up to `free` runs (long poll)",
        responses={200: {"model": WorkAnswer}, **refusals(401, 403, 413, 422, 503)},
    )
    async def work(body: WorkBody, me: Me, request: Request) -> Any:
        project = scheduler.project
        agents = fleet_runs.runner_agents(project, me.labels)
        answer: dict[str, Any] = {"ok": True, "state": me.state.value, "runs": []}
        if me.state is not RunnerState.ACTIVE:
            return answer  # cordoned or draining: no new work
        if project.bundle is None:
            if agents:
                answer["waiting"] = (
                    "the control plane has no project bundle: `corral push` publishes one, "
                    "and runners run what it holds"
                )
            await asyncio.sleep(min(body.wait, 5.0))
            return answer
        held = len(await store.runner_holdings(me.id))
        free = min(body.free, max(me.slots - held, 0))
        if free <= 0 or not agents:
            # nothing it may run, or its slots are taken (runs not yet recovered count)
            await asyncio.sleep(min(body.wait, 5.0 if not agents else 1.0))
            return answer
        woken = asyncio.Event()
        unsubscribe = store.changes.subscribe(QUEUE, woken.set)
        scheduler.wake_listeners.add(woken.set)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.wait
        key = frozenset(agents)
        hashes = body.secret_hashes[:free]

        claim_now = functools.partial(
            _claim_if_active, store, me.id, free, project.bundle, agents, hashes, loop.time()
        )
        warm: WarmReports | None = getattr(request.app.state, "runner_warm", None)
        me_waiting = object()
        waiting[me_waiting] = (me.id, key)
        try:
            while True:
                woken.clear()
                # Over as soon as the control plane stops or the runner is gone: nothing
                # is claimed for a runner that cannot receive it (it would only lapse),
                # and a request left waiting would hold the control plane's shutdown for
                # the rest of the long poll (up to 25 s). A drain for an upgrade goes on
                # serving runners: their runs are not this process's.
                if scheduler.stopping or await request.is_disconnected():
                    return answer
                period = _POLL_NOTIFIED if store.changes.remote else _POLL
                await asyncio.sleep(head_start(me.id, key, warm))  # a warm runner first
                claims = await empty.claim(key, period, claim_now)
                if claims:
                    break
                left = deadline - loop.time()
                if left <= 0:
                    return answer
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(period, left))
        except _NotActive as gone:
            answer["state"] = gone.state
            return answer
        finally:
            waiting.pop(me_waiting, None)
            unsubscribe()
            scheduler.wake_listeners.discard(woken.set)
        # a running rollout's canary share of these runs runs its candidate bundle
        claims = await rollouts.assign(store, scheduler.rollout, claims)
        manifests: dict[str, dict[str, str]] = {}
        for bundle in {c.run.bundle or project.bundle for c in claims}:
            stored = await store.get_bundle(bundle)
            manifests[bundle] = dict(stored.agents) if stored is not None else {}
        for index, claim in enumerate(claims):  # in item order, as the hashes were used
            agent = project.agents[claim.run.agent]
            bundle = claim.run.bundle or project.bundle
            answer["runs"].append(
                {
                    **fleet_runs.claim_json(claim),
                    "leaseSeconds": fleet_runs.LEASE_SECONDS,
                    "secretHash": hashes[index] if index < len(hashes) else None,
                    "bundle": bundle,
                    "agentBundle": manifests[bundle].get(agent.name),
                    "credentials": fleet_runs.credentials_json(_credentials(project, agent)),
                }
            )
            log.info(
                "run %s handed to runner %s",
                claim.run.id,
                me.id,
                extra={"action": "run_to_runner", "run_id": claim.run.id, "runner_id": me.id},
            )
        return answer


def _report_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store
    own = _owner_check(scheduler)

    @router.get(
        "/runs/{run_id}", summary="One of this runner's runs", responses=_answers(RunAnswer)
    )
    async def get_run(run_id: str, me: Me) -> Any:
        run = await own(me, run_id, None)
        return {"ok": True, "run": fleet_runs.run_wire(run)}

    @router.post(
        "/runs/{run_id}/secret", summary="The run secret's hash", responses=_answers(RunAnswer)
    )
    async def secret(run_id: str, body: SecretBody, me: Me) -> Any:
        run = await own(me, run_id, body.fence)
        if run.state is not RunState.STARTING:
            # set before the run's process starts (a retry then is harmless); once it
            # runs, a runner cannot swap the secret its agent API calls are checked by
            raise ActionError(
                409, f"run {run_id} is {run.state.value}: its secret is set before it starts"
            )
        run = await _conflicts(store.set_run_secret(run_id, body.hash))
        return {"ok": True, "run": fleet_runs.run_wire(run)}

    @router.post(
        "/runs/{run_id}/running",
        summary="The run's process started",
        responses=_answers(RunAnswer),
    )
    async def running(run_id: str, body: RunningBody, me: Me) -> Any:
        await own(me, run_id, body.fence)
        # The host names the runner: a control plane never takes it for one of its own
        # processes (its recovery reaps the processes of lost runs of its own host).
        host = f"{body.host or me.hostname} (runner {me.name})"
        run = await _conflicts(store.mark_run_running(run_id, pid=body.pid, host=host))
        return {"ok": True, "run": fleet_runs.run_wire(run)}

    @router.post(
        "/runs/{run_id}/log",
        summary="Output of the run (raw bytes), appended",
        responses=_answers(LogAnswer),
        openapi_extra=_RAW_BODY,
    )
    async def append_log(
        run_id: str, request: Request, me: Me, fence: Annotated[int, Query(ge=0, le=2**62)]
    ) -> Any:
        run = await own(me, run_id, fence)
        data = await request.body()
        if data:
            path = scheduler.executor.log_path(run_id)
            await asyncio.to_thread(_append, path, data)
            if anomalies.hook_markers(data):  # a failed hook's line may have come in
                await anomalies.hooks_from_log(store, run, path)
        return {"ok": True, "bytes": len(data)}

    @router.post(
        "/runs/{run_id}/usage", summary="What the run used so far", responses=_answers(RunAnswer)
    )
    async def usage(run_id: str, body: UsageBody, me: Me) -> Any:
        await own(me, run_id, body.fence)
        run = await store.record_usage(
            run_id,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            cache_read_tokens=body.cache_read_tokens,
            cache_write_tokens=body.cache_write_tokens,
            cost_usd=body.cost_usd,
            budget=body.budget,
        )
        return {"ok": True, "run": None if run is None else fleet_runs.run_wire(run)}

    @router.post(
        "/runs/{run_id}/cap",
        summary="Why the run may not start now, if it may not",
        responses=_answers(CapAnswer),
    )
    async def cap(run_id: str, body: FenceBody, me: Me) -> Any:
        run = await own(me, run_id, body.fence)
        return {"ok": True, "refusal": await store.daily_cap_refusal(run.agent)}


def _bucket_routes(router: APIRouter, scheduler: Scheduler) -> None:
    """The provider buckets (D113) for built-in runs on runners: the run is the waiter
    and its agent takes the fair turn, as for runs on the control plane."""
    store = scheduler.store
    own = _owner_check(scheduler)

    @router.post(
        "/runs/{run_id}/permit",
        summary="A model request permit for the run, or how long to wait",
        responses=_answers(WaitAnswer),
    )
    async def permit(run_id: str, body: BucketBody, me: Me, request: Request) -> Any:
        run = await own(me, run_id, body.fence)
        _uses(scheduler.project, run, body.provider)
        limits = body.limits(scheduler.project)
        # The run waits for its turn here, next to the store, for up to PERMIT_HOLD
        # seconds (as a run on the control plane waits in its own loop): asking again
        # from the runner would cost a round trip each time, and the permit that comes
        # free while an answer travels lies idle.
        loop = asyncio.get_running_loop()
        until = loop.time() + PERMIT_HOLD
        while True:
            wait = await store.take_provider_permit(
                body.bucket, body.provider, run.id, run.agent, limits
            )
            if wait <= 0 or loop.time() + wait > until or scheduler.stopping:
                return {"ok": True, "wait": wait}
            await asyncio.sleep(wait)
            if await request.is_disconnected():  # the runner gave up: no permit for it
                return {"ok": True, "wait": wait}

    @router.post(
        "/runs/{run_id}/tokens",
        summary="Charge the tokens a model request used",
        responses=_answers(WaitAnswer),
    )
    async def tokens(run_id: str, body: TokensBody, me: Me) -> Any:
        _uses(scheduler.project, await own(me, run_id, body.fence), body.provider)
        limits = body.limits(scheduler.project)
        await store.charge_provider_tokens(body.bucket, body.provider, body.tokens, limits)
        return {"ok": True, "wait": 0.0}

    @router.post(
        "/runs/{run_id}/throttle",
        summary="The provider refused a request (429): slow everyone down",
        responses=_answers(WaitAnswer),
    )
    async def throttle(run_id: str, body: ThrottleBody, me: Me) -> Any:
        _uses(scheduler.project, await own(me, run_id, body.fence), body.provider)
        limits = body.limits(scheduler.project)
        wait = await store.throttle_provider(body.bucket, body.provider, body.retry_after, limits)
        return {"ok": True, "wait": wait}


def _uses(project: Any, run: Run, provider: str) -> None:
    """403 unless ``provider`` is one that ``run``'s agent's models use (as the control
    plane knows the agent; an agent it does not know, of another bundle, is let through):
    a runner acts on the buckets its run needs, not on every provider's."""
    agent = project.agents.get(run.agent)
    if agent is None:
        return
    used = {
        model.provider
        for name in agent.config.models
        if (model := project.config.models.get(name)) is not None
    }
    if provider not in used:
        raise ActionError(
            403,
            f"run {run.id}'s agent {run.agent!r} uses no model of provider {provider!r}",
        )


def _end_routes(router: APIRouter, scheduler: Scheduler) -> None:
    store = scheduler.store
    own = _owner_check(scheduler)

    @router.post(
        "/runs/{run_id}/end",
        summary="The run ended: finalise it with its fence",
        responses=_answers(EndAnswer),
    )
    async def end(run_id: str, body: EndBody, me: Me) -> Any:
        run = await own(me, run_id, None)
        try:
            result = await store.finalize(
                run_id,
                fence=body.fence,
                state=RunState(body.state),
                exit_code=body.exit_code,
                error=body.error,
            )
        except StaleFence as exc:
            raise ActionError(409, str(exc)) from None
        if scheduler.hooks_to_check(result.run):  # the log may have come in first
            await anomalies.hooks_from_log(
                store, result.run, scheduler.executor.log_path(result.run.id)
            )
        log.info(
            "run %s on runner %s ended %s",
            run.id,
            me.id,
            body.state,
            extra={"action": "run_finished", "run_id": run.id, "runner_id": me.id},
        )
        if result.rerun_item is not None:
            scheduler.wake()
        return {
            "ok": True,
            "run": fleet_runs.run_wire(result.run),
            "item": fleet_runs.item_wire(result.item),
            "rerun": None if result.rerun_item is None else fleet_runs.item_wire(result.rerun_item),
        }

    @router.post(
        "/runs/{run_id}/release",
        summary="Give the run's item back to the queue",
        responses=_answers(RunAnswer),
    )
    async def release(run_id: str, body: ReleaseBody, me: Me) -> Any:
        await own(me, run_id, None)
        try:
            ended = await store.release(run_id, fence=body.fence, reason=body.reason)
        except StaleFence as exc:
            raise ActionError(409, str(exc)) from None
        scheduler.wake()
        return {"ok": True, "run": fleet_runs.run_wire(ended)}


async def _conflicts(step: Any) -> Run:
    """``step``'s run; a refusal of what the store holds (the run ended) is a 409."""
    try:
        run: Run = await step
    except StoreError as exc:
        raise ActionError(409, str(exc)) from None
    return run


def _credentials(project: Any, agent: Any) -> list[Any]:
    """The agent's credentials as this control plane holds them; one it lacks is left
    out (the run fails on the runner naming it, as it would here)."""
    creds = CredentialStore()
    loaded = []
    refs = [*agent.config.credentials, *fleet_runs.implied_keys(project, agent)]
    for ref in dict.fromkeys(str(r) for r in refs):
        with contextlib.suppress(CredentialError):
            loaded += creds.resolve([ref], missing_ok=True)
    return loaded


def _stale(run: Run, fence: int) -> str:
    return (
        f"run {run.id} (fence {fence}) is no longer this runner's: its lease lapsed or it "
        f"ended (it is {run.state.value}); stop it and report nothing more"
    )


def _append(path: Path, data: bytes) -> None:
    private_dirs(path.parent, path.parent.parent)
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
