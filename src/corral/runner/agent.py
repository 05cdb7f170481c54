"""`corral runner start`: a runner host runs the fleet's runs.

The runner keeps three loops:

- heartbeat (every ``heartbeatSeconds``, 5 s by default): tells the control plane which
  runs it executes (with their fences); the answer renews their leases (one statement
  on the control plane) and names the runs that are no longer its own (their lease
  lapsed and they were handed on, or an operator killed them): those are stopped at
  once.
- self-fencing (every 0.5 s): when no heartbeat has been acknowledged for 7/12 of the
  lease (``FENCE_SHARE``: 7 s of the default 12 s lease, a 5 s margin for clock rates
  and the kill), every run's process group is killed and no work is asked for until a
  heartbeat is acknowledged again. The clock is monotonic: a runner that was frozen
  (SIGSTOP) finds on waking that the deadline passed and kills before anything else.
  The scheduler's watchdog process (``corral.scheduler.watchdog``) holds the same
  deadline: it kills the runs' processes when the deadline passes, and at once when the
  runner process dies (kill -9), so no run outlives its runner. The lease is the one
  the control plane announces (``leaseSeconds`` in every heartbeat answer and with
  every run): the runner fences itself off at 7/12 of it, so a control plane started
  with a shorter lease (``CORRAL_FLEET_LEASE_SECONDS``) keeps the same margins.
- work: a long poll (``POST /fleet/v1/work``) with the number of free slots; each run it
  is given is executed by the same ``RunExecutor`` the control plane uses, over a
  ``RemoteLedger`` (the executor's store calls as runner API calls, each with the run's
  fence) and an ``AgentLink`` whose gateway is a Unix socket forwarded to the control
  plane (``AgentApiProxy``), so the in-run commands work, with ``network = "none"`` too.

Per run: the agent's bundle is fetched by hash (``BundleCache``), unpacked once per hash
and loaded with the normal project loader; the credentials the control plane delivered
are written to a private (0700) directory used as the run's credential store, removed
with the run; the run's output streams back to the control plane's run log (batched:
every 100 ms or 64 KiB).

Warm workspaces (``corral.scheduler.warm``, the control plane's own pool code): once a
runner has run an agent with ``[scale] warm = N``, it keeps up to N prepared workspaces
of it under ``WORKDIR/work/.corral/warm/AGENT/`` (``hooks.warm`` from the agent's
bundle, in the runtime its runs use, with the credentials its last run was delivered,
held in memory and written for each preparation to a private directory removed after
it). Its next runs take a ready one as a control plane's do; a newer bundle whose
config differs discards them. Each heartbeat reports the ready counts (``warm``).

Several control plane URLs may be configured: a request that cannot connect moves to
the next. SIGTERM drains: no new work; running runs may finish within the drain grace,
then they are stopped and their items given back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from corral import __version__
from corral.agentcmd import install as install_commands
from corral.bundles import BundleCache, BundleError, http_fetcher, unpack
from corral.credentials import CredentialStore
from corral.engine import fleet_runs
from corral.errors import (
    ConfigError,
    CorralError,
    StaleFence,
    StoreConflict,
    StoreUnavailable,
    UsageError,
)
from corral.project import Agent, Project, load_project
from corral.runner.proxy import AgentApiProxy
from corral.runner.upgrade import (
    UpgradeError,
    Versions,
    check_wheel,
    judge_trial,
    smoke_check,
    start_guard,
)
from corral.scheduler.agentlink import AgentLink, hash_secret
from corral.scheduler.executor import RunExecutor
from corral.scheduler.warm import WarmPool, warm_settings
from corral.scheduler.watchdog import Watchdog, boottime
from corral.store import BucketLimits, Claim, FinalizeResult, Run, RunState, Store

__all__ = [
    "FENCE_AFTER",
    "RemoteLedger",
    "Runner",
    "RunnerSettings",
    "systemd_unit",
]

log = logging.getLogger("corral.runner")

#: Self-fence after this long without an acknowledged heartbeat, until the control plane
#: announces its lease (then 7/12 of it): the default 12 s lease less a 5 s margin.
FENCE_AFTER = fleet_runs.DEFAULT_LEASE_SECONDS * fleet_runs.FENCE_SHARE
#: How often the self-fencing deadline is checked.
FENCE_CHECK = 0.5
#: The run log is sent in batches: at most this often, and at most this large.
LOG_BATCH_SECONDS = 0.1
LOG_BATCH_BYTES = 60 * 1024
#: How long a running run may take to finish after SIGTERM before it is given back.
DRAIN_GRACE = 60.0
_LONG_POLL = fleet_runs.MAX_WAIT
#: How long a provider permit's request to the control plane may take (the run waits
#: and asks again after that).
PERMIT_TIMEOUT = 10.0
#: How long a runner asks for work without secretHashes after a control plane refused
#: them, before it offers them again (one refused request per this long, at most).
_PLAIN_WORK_SECONDS = 600
#: How long a runner leaves its warm counts out of heartbeats after a control plane
#: refused them (an older corral), before it reports them again.
_PLAIN_BEAT_SECONDS = 600


@dataclass
class RunnerSettings:
    """What `corral runner start` reads from the runner config file."""

    urls: list[str]
    runner_id: str
    credential: str = field(repr=False)
    name: str
    work_dir: Path
    slots: int = 1
    heartbeat_seconds: float = 5.0
    fence_after: float = FENCE_AFTER
    drain_grace: float = DRAIN_GRACE
    kill_grace: float = 5.0
    #: The run's gateway sockets live here (a short path: a socket's is at most 107 bytes).
    socket_dir: Path | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: Path) -> RunnerSettings:
        urls = config.get("urls") or [config["url"]]
        if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
            raise UsageError(
                f"{path}: urls must be a list of control plane URLs, e.g. "
                '["https://cp1.example.com", "https://cp2.example.com"]'
            )
        work = config.get("workDir") or str(path.parent / f"runner-{config['runnerId']}")
        slots = config.get("slots", 1)
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1024:
            raise UsageError(f"{path}: slots must be a whole number from 1 to 1024")
        return cls(
            urls=[u.rstrip("/") for u in urls],
            runner_id=str(config["runnerId"]),
            credential=str(config["credential"]),
            name=str(config.get("name") or config["runnerId"]),
            work_dir=Path(work),
            slots=slots,
            heartbeat_seconds=float(config.get("heartbeatSeconds", 5)),
            drain_grace=float(config.get("drainSeconds", DRAIN_GRACE)),
        )


class ControlPlaneError(CorralError):
    """The control plane answered with an error (``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlClient:
    """Requests to the control plane's runner API, with the runner's credential; a
    connection that cannot be opened moves to the next URL (nothing was sent)."""

    def __init__(self, urls: Sequence[str], credential: str) -> None:
        self.urls = list(urls)
        self.preferred = 0
        self._headers = {"Authorization": f"Bearer {credential}"}
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=3.0))

    async def close(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The JSON answer; ControlPlaneError for an error answer, StoreUnavailable when
        no control plane could be reached (or the request failed on the way)."""
        problem = ""
        limit = httpx.Timeout(timeout if timeout is not None else 15.0, connect=3.0)
        for step in range(len(self.urls)):
            index = (self.preferred + step) % len(self.urls)
            url = self.urls[index] + path
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    content=content,
                    params=params,
                    headers=self._headers,
                    timeout=limit,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problem = f"{self.urls[index]}: {type(exc).__name__}"
                continue
            except httpx.HTTPError as exc:
                raise StoreUnavailable(
                    f"the control plane at {self.urls[index]} did not answer {method} {path}: "
                    f"{type(exc).__name__}"
                ) from None
            if index != self.preferred:
                log.warning("control plane %s answers now", self.urls[index])
            self.preferred = index
            try:
                answer: dict[str, Any] = response.json()
            except ValueError:
                answer = {"ok": False, "error": response.text[:300]}
            if response.status_code >= 500:
                raise StoreUnavailable(
                    f"the control plane failed ({response.status_code}): {answer.get('error')}"
                )
            if response.status_code >= 300 or not answer.get("ok", False):
                raise ControlPlaneError(
                    response.status_code, str(answer.get("error") or answer.get("detail"))
                )
            return answer
        raise StoreUnavailable(f"no control plane is reachable ({problem})")


class RemoteLedger:
    """What ``RunExecutor`` (and run preparation) call on the store, for ONE run on a
    runner: each call is a runner API call carrying the run's fence. A refusal because
    the run is no longer this runner's is ``StaleFence`` (finalise, release) or
    ``StoreConflict`` (the rest), which the executor takes as final; an unreachable
    control plane is ``StoreUnavailable``, which it retries."""

    def __init__(self, client: ControlClient, run: Run) -> None:
        if run.fence is None:
            raise ValueError(f"run {run.id} has no fence")
        self.client = client
        self.run_id = run.id
        self.fence = run.fence
        #: The run's log stream: what it holds is sent before the run ends (the control
        #: plane takes no more of a run's log once it ended).
        self.log: LogStream | None = None

    async def _send_log(self) -> None:
        if self.log is not None:
            await self.log.drain()

    def _path(self, run_id: str, what: str = "") -> str:
        if run_id != self.run_id:
            raise StoreConflict(f"this runner reports on run {self.run_id} only, not {run_id}")
        return f"/fleet/v1/runs/{run_id}" + (f"/{what}" if what else "")

    async def _post(self, run_id: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.client.call(
                "POST", self._path(run_id, what), json={"fence": self.fence, **body}
            )
        except ControlPlaneError as exc:
            if exc.status in (403, 404, 409):
                raise StoreConflict(str(exc)) from None
            raise

    async def set_run_secret(self, run_id: str, secret_hash: str) -> Run:
        answer = await self._post(run_id, "secret", {"hash": secret_hash})
        return fleet_runs.run_from_wire(answer["run"])

    async def daily_cap_refusal(self, agent: str) -> str | None:
        answer = await self._post(self.run_id, "cap", {})
        refusal = answer.get("refusal")
        return None if refusal is None else str(refusal)

    async def get_run(self, run_id: str) -> Run | None:
        try:
            answer = await self.client.call("GET", self._path(run_id))
        except ControlPlaneError as exc:
            if exc.status in (403, 404):
                return None
            raise
        return fleet_runs.run_from_wire(answer["run"])

    async def mark_run_running(self, run_id: str, *, pid: int | None, host: str | None) -> Run:
        answer = await self._post(run_id, "running", {"pid": pid, "host": host or ""})
        return fleet_runs.run_from_wire(answer["run"])

    async def record_usage(
        self,
        run_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        cost_usd: float | None,
        budget: str | None = None,
    ) -> Run | None:
        body = {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "cacheReadTokens": cache_read_tokens,
            "cacheWriteTokens": cache_write_tokens,
            "costUsd": cost_usd,
            "budget": budget,
        }
        answer = await self._post(run_id, "usage", body)
        return None if answer.get("run") is None else fleet_runs.run_from_wire(answer["run"])

    # The provider buckets (corral.llm.ratelimit.Permits): the built-in harness's loop
    # runs here, and asks the control plane's buckets for each model request, as the run
    # (its fence); an unreachable control plane is StoreUnavailable, which GatedClient
    # waits out within the run's deadline.

    def _bucket_body(self, bucket: str, provider: str, limits: BucketLimits) -> dict[str, Any]:
        return {
            "fence": self.fence,
            "bucket": bucket,
            "provider": provider,
            "requestsPerSecond": limits.requests_per_second,
            "tokensPerSecond": limits.tokens_per_second,
            "burst": limits.burst,
            "window": limits.window,
        }

    async def _bucket_call(self, what: str, body: dict[str, Any]) -> float:
        try:
            answer = await self.client.call(
                "POST", self._path(self.run_id, what), json=body, timeout=PERMIT_TIMEOUT
            )
        except ControlPlaneError as exc:
            if exc.status in (403, 404, 409):
                raise StoreConflict(str(exc)) from None
            raise
        return float(answer.get("wait") or 0.0)

    async def take_provider_permit(
        self, bucket: str, provider: str, waiter: str, agent: str, limits: BucketLimits
    ) -> float:
        # the waiter and its agent are the run's own: the control plane knows them
        return await self._bucket_call("permit", self._bucket_body(bucket, provider, limits))

    async def charge_provider_tokens(
        self, bucket: str, provider: str, tokens: int, limits: BucketLimits
    ) -> None:
        body = self._bucket_body(bucket, provider, limits) | {"tokens": tokens}
        await self._bucket_call("tokens", body)

    async def throttle_provider(
        self, bucket: str, provider: str, retry_after: float | None, limits: BucketLimits
    ) -> float:
        body = self._bucket_body(bucket, provider, limits) | {"retryAfter": retry_after}
        return await self._bucket_call("throttle", body)

    async def finalize(
        self,
        run_id: str,
        *,
        fence: int,
        state: RunState,
        exit_code: int | None,
        error: str | None = None,
        reserve_rerun_for: str | None = None,
    ) -> FinalizeResult:
        body = {"fence": fence, "state": state.value, "exitCode": exit_code, "error": error}
        await self._send_log()
        try:
            answer = await self.client.call("POST", self._path(run_id, "end"), json=body)
        except ControlPlaneError as exc:
            if exc.status in (403, 404, 409):
                raise StaleFence(str(exc)) from None
            raise
        rerun = answer.get("rerun")
        return FinalizeResult(
            fleet_runs.run_from_wire(answer["run"]),
            fleet_runs.item_from_wire(answer["item"]),
            None if rerun is None else fleet_runs.item_from_wire(rerun),
        )

    async def release(self, run_id: str, *, fence: int, reason: str) -> Run:
        body = {"fence": fence, "reason": reason[:4000]}
        await self._send_log()
        try:
            answer = await self.client.call("POST", self._path(run_id, "release"), json=body)
        except ControlPlaneError as exc:
            if exc.status in (403, 404, 409):
                raise StaleFence(str(exc)) from None
            raise
        return fleet_runs.run_from_wire(answer["run"])


class LogStream:
    """A run's output to the control plane's run log, in batches (every
    ``LOG_BATCH_SECONDS`` or ``LOG_BATCH_BYTES``); once the control plane refuses (the
    run is no longer this runner's), nothing more is sent."""

    def __init__(self, client: ControlClient, run_id: str, fence: int) -> None:
        self.client = client
        self.path = f"/fleet/v1/runs/{run_id}/log"
        self.fence = fence
        self._buffer = bytearray()
        self._wake = asyncio.Event()
        self._closed = False
        self.refused = False
        #: One sender at a time: a batch is sent once, in order.
        self._sending = asyncio.Lock()
        self._task = asyncio.create_task(self._send_loop(), name=f"log {run_id}")

    async def write(self, chunk: bytes) -> None:
        if self.refused or not chunk:
            return
        self._buffer += chunk
        if len(self._buffer) >= LOG_BATCH_BYTES:
            self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOG_BATCH_SECONDS)
            self._wake.clear()
            await self._flush()
            if self._closed and not self._buffer:
                return

    async def drain(self) -> None:
        """Send what was written so far now, not at the next batch (before the run
        ends); a control plane out of reach keeps it for the send loop."""
        await self._flush(once=True)

    async def _flush(self, *, once: bool = False) -> None:
        async with self._sending:
            await self._send(once)

    async def _send(self, once: bool) -> None:
        while self._buffer and not self.refused:
            batch = bytes(self._buffer[:LOG_BATCH_BYTES])
            try:
                await self.client.call(
                    "POST", self.path, content=batch, params={"fence": self.fence}
                )
            except ControlPlaneError as exc:
                log.warning("the control plane refused the run's log: %s", exc)
                self.refused = True
                self._buffer.clear()
                return
            except StoreUnavailable:
                if once:
                    return  # kept: the send loop sends it once the control plane answers
                await asyncio.sleep(0.5)  # kept: sent once the control plane answers
                if self._closed:
                    return
                continue
            del self._buffer[: len(batch)]

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 10.0)
        self._task.cancel()


@dataclass
class _Live:
    claim: Claim
    executor: RunExecutor
    task: asyncio.Task[None] | None = None


class Runner:
    """The runner's loops; ``run()`` until ``stop`` (SIGTERM drains)."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.client = ControlClient(settings.urls, settings.credential)
        work = settings.work_dir
        self.bin_dir = work / "bin"
        self.cache = BundleCache(work / "bundle-cache", http_fetcher_failover(self.client))
        self.live: dict[str, _Live] = {}
        self.projects: dict[str, Project] = {}
        self.acked = time.monotonic()
        #: The lease the control plane announced, and the self-fencing delay it implies.
        self.lease = fleet_runs.DEFAULT_LEASE_SECONDS
        self.fence_after = settings.fence_after
        self.fenced = False
        self.draining = False
        self.state = "active"
        self._slot_freed = asyncio.Event()
        #: One connection pool for every run's agent API proxy: a client of its own per
        #: run cost ~80 ms before each run could start (its TLS context, made anew).
        self.proxy_client: httpx.AsyncClient | None = None
        #: Run secrets made ahead, (hash, secret): their hashes go with a request for
        #: work, and the claim stores one with each run it gives (no request per run).
        self._spare: list[tuple[str, str]] = []
        #: Until then (monotonic), requests for work offer no secretHashes: the control
        #: plane is of a version that refused them (``_ask_for_work``).
        self._plain_work_until = 0.0
        self._stops: set[asyncio.Task[bool]] = set()
        self._loading: dict[str, asyncio.Lock] = {}
        #: A process of its own that kills the runs' processes when the fencing deadline
        #: passes before a heartbeat moved it, and when this process dies (kill -9).
        self.watchdog = Watchdog()
        socket_dir = settings.socket_dir or Path(tempfile.gettempdir()) / (
            f"corral-{os.getuid()}-{settings.runner_id}"
        )
        self.socket_dir = socket_dir
        #: corral's own versions on this runner (``corral.runner.upgrade``).
        self.versions = Versions(settings.work_dir)
        #: What the next heartbeat reports of an upgrade (its state, version, error).
        self.upgrade_report: dict[str, Any] | None = None
        #: Set while this runner upgrades (drains, installs, swaps): no new work.
        self.upgrading: str | None = None
        #: After run() returns: the interpreter and arguments to re-execute into.
        self.reexec: list[str] | None = None
        self._stop: asyncio.Event | None = None
        self._upgrade_task: asyncio.Task[None] | None = None
        #: A request for work is under way (its answer may bring runs).
        self.polling = False
        #: Warm workspaces, one pool per agent this runner ran that asks for them.
        self.warm: dict[str, WarmPool] = {}
        #: The credentials delivered with each warm agent's latest run: what its
        #: workspaces are prepared with (in memory; on disk only while one is prepared).
        self._warm_credentials: dict[str, list[Mapping[str, Any]]] = {}
        #: Until then (monotonic), heartbeats carry no warm counts (an older control plane).
        self._plain_beat_until = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        for path in (self.settings.work_dir, self.socket_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        install_commands(self.bin_dir)
        self._stop = stop
        if not await self._after_upgrade():
            return
        self.watchdog.deadline = boottime() + self.fence_after
        self.watchdog.start()
        log.info(
            "runner %s (%s) starting: %d slot(s), control plane %s",
            self.settings.runner_id,
            self.settings.name,
            self.settings.slots,
            ", ".join(self.settings.urls),
        )
        # no overall timeout: the runs' long polls (rlock --wait, al-subagent-wait) last as
        # long as they asked; connecting is bounded
        self.proxy_client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        await self._beat()  # the first heartbeat before any work
        loops = [
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._fencing(), name="fencing"),
            asyncio.create_task(self._work(), name="work"),
        ]
        try:
            await stop.wait()
            await self.drain()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._upgrade_task is not None:
                self._upgrade_task.cancel()
            for pool in self.warm.values():
                await pool.stop()
            await self.client.close()
            if self.proxy_client is not None:
                await self.proxy_client.aclose()
            self.watchdog.close(kill_runs=True)

    # -- upgrades -------------------------------------------------------------------------

    async def _after_upgrade(self) -> bool:
        """On start: adopt the running install as a version; when this process is the
        new version of an upgrade under trial, run the smoke check first: healthy, it
        goes on (True); failed, ``current`` is swapped back and the old version is
        re-executed (False: run() returns, the caller re-executes)."""
        await asyncio.to_thread(self.versions.adopt_running)
        failure = self.versions.take_failure()
        if failure is not None:
            self.upgrade_report = {"state": "failed", **failure}
        trial = self.versions.trial()
        if trial is None or trial.get("to") != __version__:
            return True
        back = await judge_trial(
            self.versions, trial, lambda: smoke_check(self.settings.work_dir), log
        )
        if back is not None:
            self.reexec = back
            return False
        self.upgrade_report = {"state": "upgraded", "version": __version__, "from": trial["from"]}
        return True

    def _consider_upgrade(self, order: Any) -> None:
        """A heartbeat answer's ``upgrade`` order: start upgrading, unless one is under
        way, this is the version already, or this version failed here already."""
        if not isinstance(order, dict) or self.upgrading or self.draining:
            return
        version = str(order.get("version") or "")
        if not version or version == __version__:
            return
        failed = self.upgrade_report or {}
        if failed.get("state") == "failed" and failed.get("version") == version:
            return
        done = self.versions.take_failure()
        if done is not None and done.get("version") == version and not order.get("retry"):
            return
        self.upgrading = version
        self._upgrade_task = asyncio.create_task(self._upgrade(order), name="upgrade")

    async def _upgrade(self, order: dict[str, Any]) -> None:
        version = str(order["version"])
        log.info("upgrading to corral %s: draining (%d run(s) running)", version, len(self.live))
        self.upgrade_report = {"state": "draining", "version": version}
        try:
            python = await self._install(version, order)
        except Exception as exc:
            error = f"the install of corral {version} failed: {exc}"
            log.error("%s", error)
            self.versions.record_failure(version, "install", error)
            self.upgrade_report = {
                "state": "failed",
                "version": version,
                "stage": "install",
                "error": error,
            }
            self.upgrading = None
            return
        # no run is killed: the running ones end first, and a request for work under way
        # (a long poll, up to its wait) is answered first: the runs it brings run too
        while self.live or self.polling:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), 1.0)
        argv = ["-m", "corral", *sys.argv[1:]]
        self.versions.begin_trial(__version__, version, argv, upgrade_start_timeout())
        self.versions.point_at(version)
        start_guard(self.settings.work_dir, os.getpid())
        log.info("corral %s installed and current: restarting into it", version)
        self.reexec = [str(python), *argv]
        if self._stop is not None:
            self._stop.set()

    async def _install(self, version: str, order: dict[str, Any]) -> Path:
        if version in self.versions.installed() and self.versions.python(version).exists():
            return self.versions.python(version)  # kept from before: a rollback
        wheel = order.get("wheel")
        if isinstance(wheel, dict):
            data = await self._fetch_wheel(version)
            check_wheel(data, str(wheel.get("sha256", "")))
            name = str(wheel.get("name") or f"corral-{version}-py3-none-any.whl")
            if "/" in name or not name.endswith(".whl"):
                raise UpgradeError(f"the control plane named the wheel {name!r}: no wheel name")
            folder = self.settings.work_dir / "versions" / ".wheels"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = folder / name
            path.write_bytes(data)
            try:
                return await asyncio.to_thread(self.versions.install, version, path)
            finally:
                path.unlink(missing_ok=True)
        index = order.get("index")
        if isinstance(index, str) and index:
            return await asyncio.to_thread(self.versions.install, version, None, index)
        raise UpgradeError("the upgrade order names neither a wheel nor an index")

    async def _fetch_wheel(self, version: str) -> bytes:
        base = self.client.urls[self.client.preferred]
        response = await self.client._http.get(
            f"{base}/fleet/v1/upgrade/wheel",
            params={"version": version},
            headers=self.client._headers,
            timeout=120.0,
        )
        if response.status_code != 200:
            raise UpgradeError(
                f"the control plane did not serve the wheel of {version} "
                f"({response.status_code}): {response.text[:300]}"
            )
        return response.content

    async def drain(self) -> None:
        """No new work; running runs finish within the grace, then are given back."""
        self.draining = True
        log.info(
            "draining: %d run(s) may finish within %g s", len(self.live), self.settings.drain_grace
        )
        tasks = [live.task for live in self.live.values() if live.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_grace)
            for live in list(self.live.values()):
                await live.executor.stop(live.claim.run.id, "the runner shut down", requeue=True)
            if pending:
                await asyncio.wait(pending, timeout=self.settings.kill_grace + 30)

    # -- heartbeat and fencing --------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            with contextlib.suppress(StoreUnavailable, ControlPlaneError):
                await self._beat()

    async def _beat(self) -> None:
        sent, sent_boot = time.monotonic(), boottime()
        report = self.upgrade_report
        body = self._beat_body(report)
        try:
            answer = await self._send_beat(body)
        except ControlPlaneError as exc:
            log.error("heartbeat refused (%s): %s", exc.status, exc)
            if exc.status in (401, 403):  # revoked or unknown: nothing may go on
                await self._fence_all(f"the control plane refused this runner: {exc}")
            raise
        except StoreUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
            raise
        self.acked = max(self.acked, sent)
        if (
            report is not None
            and report is self.upgrade_report
            and report["state"] != "draining"
            # False: the control plane could not record it (lost its compare and set);
            # absent: a control plane that does not say, and records what it is told
            and answer.get("upgradeRecorded", True) is not False
        ):
            self.upgrade_report = None  # told once
            if report["state"] == "failed":
                self.versions.clear_failure()
        self._consider_upgrade(answer.get("upgrade"))
        self.adopt_lease(answer.get("leaseSeconds"))
        self.watchdog.set_deadline(sent_boot + self.fence_after)
        self.state = str(answer.get("state", "active"))
        if self.fenced:
            log.info("heartbeats are acknowledged again: asking for work again")
            self.fenced = False
        for run_id in answer.get("gone", []):
            live = self.live.get(run_id)
            if live is not None:
                log.warning(
                    "run %s is no longer this runner's (its lease lapsed): killing it", run_id
                )
                await live.executor.fence_off(
                    run_id, "the control plane handed the run on (its lease lapsed)"
                )
        for run_id in answer.get("kill", []):
            live = self.live.get(run_id)
            if live is not None:
                task = asyncio.create_task(live.executor.stop(run_id, "killed by an operator"))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)

    def _beat_body(self, report: dict[str, Any] | None) -> dict[str, Any]:
        """What a heartbeat says: the runs and their fences, the bundles cached, an
        upgrade's report, the ready warm workspaces."""
        running = [
            {"runId": run_id, "fence": live.claim.run.fence} for run_id, live in self.live.items()
        ]
        body: dict[str, Any] = {
            "version": __version__,
            "running": running,
            "bundles": self.cache.cached()[:256],
        }
        if report is not None:
            body["upgrade"] = report
        if self.warm and time.monotonic() >= self._plain_beat_until:
            body["warm"] = self.warm_counts()
        return body

    async def _send_beat(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.client.call(
                "POST", "/fleet/v1/heartbeat", json=body, timeout=self.fence_after
            )
        except ControlPlaneError as exc:
            if exc.status == 422 and "warm" in str(exc) and "warm" in body:
                # a control plane older than warm workspaces on runners: not told them
                log.warning(
                    "the control plane does not take warm counts (an older corral): not "
                    "reporting them for the next %d s",
                    _PLAIN_BEAT_SECONDS,
                )
                self._plain_beat_until = time.monotonic() + _PLAIN_BEAT_SECONDS
                body.pop("warm")
                return await self._send_beat(body)
            if exc.status != 422 or "upgrade" not in str(exc) or "upgrade" not in body:
                raise
        # a control plane older than upgrades: it is not told (nor asked) about them
        body.pop("upgrade")
        return await self.client.call(
            "POST", "/fleet/v1/heartbeat", json=body, timeout=self.fence_after
        )

    async def _fencing(self) -> None:
        while True:
            await asyncio.sleep(FENCE_CHECK)
            self.watchdog.ensure()
            silent = time.monotonic() - self.acked
            if silent >= self.fence_after and not self.fenced:
                await self._fence_all(
                    f"self-fenced: runner {self.settings.runner_id} had no heartbeat "
                    f"acknowledged for {silent:.1f} s (lease {self.lease:g} s)"
                )

    def adopt_lease(self, announced: Any) -> None:
        """The lease a control plane announced: self-fencing follows it (7/12 of it).
        Anything but a number of seconds within the bounds leaves it as it was."""
        if isinstance(announced, bool) or not isinstance(announced, int | float):
            return
        low, high = fleet_runs.LEASE_BOUNDS
        lease = float(announced)
        if not low <= lease <= high or lease == self.lease:
            return
        log.info(
            "the control plane's lease is %g s: self-fencing after %g s",
            lease,
            lease * fleet_runs.FENCE_SHARE,
        )
        self.lease = lease
        self.fence_after = lease * fleet_runs.FENCE_SHARE

    async def _fence_all(self, reason: str) -> None:
        self.fenced = True
        if self.live:
            log.error("%s: killing %d run(s)", reason, len(self.live))
        await asyncio.gather(
            *(live.executor.fence_off(run_id, reason) for run_id, live in list(self.live.items())),
            return_exceptions=True,
        )

    # -- work -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while not self.draining:
            free = self.settings.slots - len(self.live)
            if self.fenced or free <= 0 or self.state != "active" or self.upgrading:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), 1.0)
                continue
            try:
                self.polling = True
                try:
                    answer, offered = await self._ask_for_work(free)
                finally:
                    self.polling = False
            except (StoreUnavailable, ControlPlaneError) as exc:
                # A claim may have committed before the failure was seen: none of the
                # hashes it was offered is offered again.
                self._spare.clear()
                log.warning("asking for work failed: %s", exc)
                refused = isinstance(exc, ControlPlaneError) and exc.status in (401, 403)
                await asyncio.sleep(5.0 if refused else 1.0)  # revoked: ask rarely
                continue
            if answer.get("waiting"):
                log.warning("%s", answer["waiting"])
            made = dict(offered)
            used = {given.get("secretHash") for given in answer.get("runs", [])}
            self._spare = [pair for pair in self._spare if pair[0] not in used]
            for given in answer.get("runs", []):
                self._start(given, made.get(str(given.get("secretHash"))))

    async def _ask_for_work(self, free: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Ask for up to ``free`` runs (a long poll): the answer, and the run secrets
        whose hashes it offered (``secretHashes``). A control plane of an older version
        refuses that field (422 naming it): the runner then asks again without it, and
        keeps asking without it for ``_PLAIN_WORK_SECONDS`` (its runs' secrets are set
        with a request each, as that version expects), then offers it again, so a
        control plane upgraded meanwhile is used fully."""
        body: dict[str, Any] = {"free": free, "wait": _LONG_POLL}
        offered: list[tuple[str, str]] = []
        if time.monotonic() >= self._plain_work_until:
            while len(self._spare) < free:
                secret = secrets.token_urlsafe(32)
                self._spare.append((hash_secret(secret), secret))
            offered = self._spare[:free]
            body["secretHashes"] = [digest for digest, _ in offered]
        try:
            answer = await self.client.call(
                "POST", "/fleet/v1/work", json=body, timeout=_LONG_POLL + 15
            )
            return answer, offered
        except ControlPlaneError as exc:
            if not offered or exc.status != 422 or "secretHashes" not in str(exc):
                raise
        log.warning(
            "the control plane does not take secretHashes (an older corral): asking for "
            "work without them for the next %d s",
            _PLAIN_WORK_SECONDS,
        )
        self._plain_work_until = time.monotonic() + _PLAIN_WORK_SECONDS
        del body["secretHashes"]
        answer = await self.client.call(
            "POST", "/fleet/v1/work", json=body, timeout=_LONG_POLL + 15
        )
        return answer, []

    def _start(self, given: Mapping[str, Any], secret: str | None = None) -> None:
        claim = fleet_runs.claim_from_json(given)
        self.adopt_lease(given.get("leaseSeconds"))
        run_id = claim.run.id
        task = asyncio.create_task(self._execute(claim, given, secret), name=f"run {run_id}")
        self.live[run_id] = _Live(claim, _placeholder_executor(), task)
        self.watchdog.track(run_id)

        def done(_: asyncio.Task[None]) -> None:
            self.live.pop(run_id, None)
            self.watchdog.untrack(run_id)
            self._slot_freed.set()

        task.add_done_callback(done)

    async def _execute(
        self, claim: Claim, given: Mapping[str, Any], secret: str | None = None
    ) -> None:
        run = claim.run
        extra = {"run_id": run.id, "agent": run.agent}
        creds_dir = self.settings.work_dir / "credentials" / run.id
        sock = self.socket_dir / f"{run.id}.sock"
        ledger = RemoteLedger(self.client, run)
        stream: LogStream | None = None
        try:
            try:
                project = await self._project(given, run.agent)
            except (BundleError, ConfigError, StoreUnavailable, ControlPlaneError) as exc:
                log.error("run %s: cannot load its bundle: %s", run.id, exc, extra=extra)
                with contextlib.suppress(Exception):
                    await ledger.finalize(
                        run.id,
                        fence=ledger.fence,
                        state=RunState.FAILED,
                        exit_code=None,
                        error=f"the runner {self.settings.name} could not load the agent: {exc}",
                    )
                return
            credentials = _write_credentials(creds_dir, given.get("credentials") or [])
            link = AgentLink(f"unix:{sock}", bin_dir=self.bin_dir, unix_url=f"unix:{sock}")
            if secret is not None:  # its hash was stored by the claim
                link.adopt(run.id, run.agent, run.trigger.value, secret)
            executor = RunExecutor(
                project,
                cast(Store, ledger),
                grace=self.settings.kill_grace,
                link=link,
                credentials=credentials,
            )
            executor.warm = self._warm_pool(project, run.agent, given)
            live = self.live.get(run.id)
            if live is not None:
                live.executor = executor
            if self.fenced or self.draining:  # not started: its item goes back at once
                with contextlib.suppress(Exception):
                    reason = "the runner could not start it (self-fenced or draining)"
                    await ledger.release(run.id, fence=ledger.fence, reason=reason)
                return

            async def answered(method: str, target: str, status: int, content: bytes) -> None:
                # al-exit is recorded by the control plane; this runner ends the run
                if method == "POST" and target == "/agent/exit" and status == 200:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        await executor.request_exit(run.id, int(json.loads(content)["code"]))

            proxy = AgentApiProxy(
                sock,
                self.settings.urls,
                headers={"X-Corral-Runner": self.settings.runner_id},
                client=self.proxy_client,
                on_answer=answered,
            )
            stream = LogStream(self.client, run.id, ledger.fence)
            ledger.log = stream
            async with proxy:
                log.info("run %s starting", run.id, extra=extra)
                result = await executor.execute(claim, stream.write)
                log.info("run %s ended %s", run.id, result.run.state.value, extra=extra)
        except Exception:
            log.exception("run %s failed on the runner", run.id, extra=extra)
        finally:
            if stream is not None:
                await stream.close()
            shutil.rmtree(creds_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                sock.unlink()

    # -- warm workspaces ----------------------------------------------------------------

    def warm_counts(self) -> dict[str, int]:
        """Ready warm workspaces on this runner, by agent (what heartbeats report)."""
        counts: dict[str, int] = {}
        for pool in self.warm.values():
            counts.update(pool.counts())
        return counts

    def _warm_pool(self, project: Project, name: str, given: Mapping[str, Any]) -> WarmPool | None:
        """The warm pool of the run's agent, made on its first run here and following
        the bundle of its latest run (a changed config discards the ready workspaces);
        None when the agent asks for none (a pool it had is emptied)."""
        agent = project.agents.get(name)
        pool = self.warm.get(name)
        if agent is None or warm_settings(agent) is None:
            if pool is not None and pool.project is not project:
                pool.reload(project)
            return None
        self._warm_credentials[name] = list(given.get("credentials") or [])
        if pool is None:
            pool = WarmPool(
                project,
                functools.partial(self._prepare_warm, name),
                serves=functools.partial(_named, name),
            )
            self.warm[name] = pool
            if not self.draining:
                pool.start()
        elif pool.project is not project:
            pool.reload(project)
        return pool

    async def _prepare_warm(self, name: str, agent: Agent, path: Path, key: str) -> bool:
        """``hooks.warm`` of ``agent`` in ``path``, as the control plane prepares one
        (``RunExecutor.prepare_warm``), with the credentials of the agent's latest run
        written for the preparation only."""
        pool = self.warm[name]
        folder = self.settings.work_dir / "credentials" / f"warm-{key}"
        given = self._warm_credentials.get(name, [])
        try:
            credentials = await asyncio.to_thread(_write_credentials, folder, given)
            executor = RunExecutor(
                pool.project,
                cast(Store, _NoStore()),
                grace=self.settings.kill_grace,
                credentials=credentials,
            )
            return await executor.prepare_warm(agent, path, key)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _project(self, given: Mapping[str, Any], agent: str) -> Project:
        """The project of the run's agent bundle: fetched, unpacked once, loaded."""
        bundle = str(given["bundle"])
        agent_bundle = given.get("agentBundle")
        key = str(agent_bundle or bundle)
        async with self._loading.setdefault(key, asyncio.Lock()):  # runs of one bundle wait
            if key not in self.projects:
                self.projects[key] = await self._load(key, bundle, agent, bool(agent_bundle))
        return self.projects[key]

    async def _load(self, key: str, bundle: str, agent: str, per_agent: bool) -> Project:
        if per_agent:
            path = await self.cache.get(key, agent=agent, within=bundle)
        else:
            path = await self.cache.get(bundle)
        target = self.settings.work_dir / "bundles" / key.removeprefix("sha256:")
        if not target.is_dir():
            data = await asyncio.to_thread(path.read_bytes)
            await asyncio.to_thread(_unpack_into, data, target, key)
        loaded = await asyncio.to_thread(load_project, target)
        return _replace_root(loaded, self.settings.work_dir / "work", target, bundle)


def http_fetcher_failover(client: ControlClient) -> Any:
    """Fetch bundles from the control plane the client talks to now."""

    async def fetch(hash_: str, agent: str | None) -> bytes:
        base = client.urls[client.preferred]
        fetcher = http_fetcher(base, client._headers["Authorization"].removeprefix("Bearer "))
        return await fetcher(hash_, agent)

    return fetch


def _replace_root(project: Project, root: Path, files: Path, bundle: str) -> Project:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return dataclasses.replace(project, root=root, files=files, bundle=bundle)


def _unpack_into(data: bytes, target: Path, hash_: str) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        unpack(data, temporary / "p", expect=hash_)
        try:
            os.replace(temporary / "p", target)
        except OSError:
            if not target.is_dir():  # another process of this runner unpacked it first
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_credentials(directory: Path, given: Sequence[Mapping[str, Any]]) -> CredentialStore:
    """The delivered credentials in a private directory: the run's credential store."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    store = CredentialStore(directory)
    for cred in given:
        values = {str(k): str(v) for k, v in dict(cred.get("values") or {}).items()}
        try:
            store.add(str(cred["type"]), str(cred["instance"]), values, replace=True)
        except CorralError as exc:
            log.warning("a delivered credential was not usable: %s", exc)
    return store


def _named(name: str, agent: Agent) -> bool:
    return agent.name == name


class _NoStore:
    """The store of a warm preparation's executor: a preparation is no run and asks the
    control plane nothing (``plan_run`` without a link reads and writes no store)."""

    def __getattr__(self, name: str) -> Any:
        raise StoreConflict(f"a warm preparation on a runner has no store ({name})")


def _placeholder_executor() -> RunExecutor:
    return cast(RunExecutor, _NoExecutor())


class _NoExecutor:
    """Stands in for a run's executor until its bundle is loaded."""

    async def fence_off(self, run_id: str, reason: str) -> bool:
        return False

    async def stop(self, run_id: str, reason: str, *, requeue: bool = False) -> bool:
        return False

    def mark_fenced(self, run_id: str, reason: str) -> None:
        return None


def systemd_unit(config: Path, executable: str) -> str:
    """A systemd unit that runs this runner (``corral runner start --config``)."""
    return f"""[Unit]
Description=corral runner ({config})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={executable} runner start --config {config}
# SIGTERM drains: running runs finish (up to the drain grace), the rest go back to the queue
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={int(DRAIN_GRACE) + 30}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def upgrade_start_timeout() -> float:
    from corral.runner import upgrade

    return upgrade.START_TIMEOUT


def install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def hostname() -> str:
    return socket.gethostname()
