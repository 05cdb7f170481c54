"""Fleet benchmark: runs on real runners, and a simulated fleet of 1,000 runners, against
one real `corral start` control plane (PostgreSQL, and SQLite for reference).

    .venv/bin/python bench/fleet.py            # both parts, both stores (7-9 min)
    .venv/bin/python bench/fleet.py --quick    # smaller counts (about 2 min)
    .venv/bin/python bench/fleet.py --only sim --stores postgresql --runners 1000

Two parts, each on a fresh store and a fresh `corral start --headless` process:

* **runs** (``--only runs``): three real runners (`corral runner join` with an
  activation token, then `corral runner start`, 4 slots each) and two agents doing the
  same work: ``local`` runs on the control plane (scale 12), ``remote`` on the runners
  (``runsOn = ["bench"]``, scale 12). Each run's command is ``date +%s.%N`` into a file
  named after its item. The project lives under ``--dir`` (/var/tmp): under /tmp a host
  run keeps the host's /tmp (a private one would hide the project), so the private /tmp
  and /app/static real projects get (a mount namespace per process) would go unmeasured.
  - *dispatch latency*: one run at a time (``POST /control/runs``, then wait for its
    stamp), enqueue to exec = the stamp less the wall-clock time just before the POST;
    p50/p99 per agent, the control plane's own dispatch as the reference.
  - *throughput*: ``--burst`` runs queued at once from 8 concurrent clients; runs/s =
    runs / (the last run's end in the store less the time before the first POST); the
    control plane's CPU per run (user+system from /proc/<pid>/stat, all threads).
* **sim** (``--only sim``): ``--runners`` simulated runners, each joined through a real
  activation token of its own and heartbeating with its own credential every 5 s
  (spread evenly), from one asyncio + httpx process over at most 64 connections; no
  runs. First heartbeats alone for ``--seconds``: the control plane's CPU as a share of
  one core (all threads, /proc/<pid>/stat), its idle share measured before, its RSS, and
  heartbeat p50/p99. Then the same heartbeats while ``--claimers`` of those runners
  long-poll ``POST /fleet/v1/work`` and ``--rate`` runs/s are queued: the claim latency
  (enqueue to the work answer arriving with the run; each claimed run is then ended
  with its fence) and heartbeat p99 under that load. ``--busy N``: each runner first
  claims N runs and holds them, so every heartbeat reports and renews N leases (a fleet
  where every runner is busy; the lease is then 300 s, so that the runs claimed first
  do not lapse while the others are claimed); ``failed`` then counts held runs answered
  gone too (none expected). ``--rollout``: a fleet upgrade runs all along (`corral
  fleet upgrade`'s own call, to a version no simulated runner reaches: its canary stays
  ordered, so every heartbeat is one of a running rollout's open step).

Figures are medians over ``--reps`` (default 1: the whole default mode stays under 10
minutes). The client shares the 2 cores with the control plane: when it cannot offer
the full heartbeat rate, the achieved rate is reported and the CPU per heartbeat is what
extrapolates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    DEFAULT_PG_DSN,
    Result,
    fresh_database,
    median_of_runs,
    print_table,
    summarize_ms,
)

from corral.bundles import pack
from corral.engine import fleet_upgrade
from corral.store import open_store

PYTHON = sys.executable
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_IDLE_SECONDS = 5.0
_RUNNERS = 3
_SLOTS = 4
_SCALE = _RUNNERS * _SLOTS
#: The runners' lease in the busy variant of the sim (s).
_BUSY_LEASE = 300.0
_STARTED = re.compile(r"gateway on (http://127\.0\.0\.1:\d+)")

# --------------------------------------------------------------------------- processes


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime, all threads


def _rss_mib(pid: int) -> float:
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return round(resident * _PAGE / 2**20, 1)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.pop("VIRTUAL_ENV", None)
    env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral"), **extra})
    return env


def _agent(root: Path, name: str, command: list[str], lines: list[str]) -> None:
    folder = root / "agents" / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\n---\n# {name}\n")
    body = [*lines, "timeout = 600", "maxWorkQueueSize = 100000"]
    body.append(f"[harness]\ncommand = {json.dumps(command)}")
    (folder / "config.toml").write_text("\n".join(body) + "\n")


@dataclass
class Plane:
    url: str
    operator: str
    proc: subprocess.Popen[bytes]
    root: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator}"}


@contextlib.asynccontextmanager
async def control_plane(
    root: Path,
    home: Path,
    store_url: str,
    lease: float | None = None,
    more_env: dict[str, str] | None = None,
) -> AsyncIterator[Plane]:
    """`corral start --headless --port 0` on ``store_url``; the project's bundle pushed.
    ``lease``: the runners' lease (``CORRAL_FLEET_LEASE_SECONDS``), else the default;
    ``more_env``: more of its environment."""
    log = root.parent / "start.log"
    extra = {} if lease is None else {"CORRAL_FLEET_LEASE_SECONDS": f"{lease:g}"}
    extra.update(more_env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "corral", "start", "--headless", "--port", "0", "--grace", "0"],
            cwd=root,
            env=_env(home, CORRAL_STATE_URL=store_url, **extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = ""
        for _ in range(1200):
            found = _STARTED.search(log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                break
            if proc.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace"))
            await asyncio.sleep(0.1)
        if not url:
            raise RuntimeError("corral start did not start in 120 s")
        operator = (root / ".corral" / "operator-token").read_text().strip()
        plane = Plane(url, operator, proc, root)
        packed = pack(root)
        async with httpx.AsyncClient(timeout=60) as http:
            pushed = await http.post(
                f"{url}/control/bundles",
                content=packed.data,
                headers={**plane.auth(), "Content-Type": "application/x-tar"},
            )
            pushed.raise_for_status()
        yield plane
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


async def _token(http: httpx.AsyncClient, plane: Plane, labels: list[str]) -> str:
    made = await http.post(
        f"{plane.url}/control/fleet/tokens", json={"labels": labels}, headers=plane.auth()
    )
    made.raise_for_status()
    return str(made.json()["token"])


@contextlib.asynccontextmanager
async def runners(
    plane: Plane, base: Path, count: int, more_env: dict[str, str] | None = None
) -> AsyncIterator[list[int]]:
    """``count`` real runners: `corral runner join` then `corral runner start`; their pids.
    ``more_env``: more of their environment."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(count):
                home = base / f"runner-{i}"
                home.mkdir(parents=True)
                config = home / "runner.json"
                token = await _token(http, plane, ["bench"])
                joined = await asyncio.to_thread(
                    subprocess.run,
                    [PYTHON, "-m", "corral", "runner", "join", plane.url, "--token", token,
                     "--name", f"r{i}", "--slots", str(_SLOTS), "--config", str(config)],
                    env=_env(home),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )  # fmt: skip
                if joined.returncode != 0:
                    raise RuntimeError(joined.stderr + joined.stdout)
                with (home / "runner.log").open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            [PYTHON, "-m", "corral", "runner", "start", "--config", str(config)],
                            env=_env(home, **(more_env or {})),
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)


@contextlib.asynccontextmanager
async def store_url(store: str, tmp: Path) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp}/state.db"
    else:
        async with fresh_database(DEFAULT_PG_DSN, prefix="fleetbench") as url:
            yield url


# --------------------------------------------------------------------------- part 1: runs


def _runs_project(root: Path, out: Path) -> None:
    root.mkdir(parents=True)
    (root / "config.toml").write_text(
        "maxRunners = 20\n[fleet]\nheartbeatSeconds = 5\nofflineAfterSeconds = 15\n"
    )
    stamp = ["/bin/sh", "-c", f'date +%s.%N > "{out}/$CORRAL_ITEM_ID"']
    _agent(root, "local", stamp, [f"scale = {_SCALE}"])
    _agent(root, "remote", stamp, [f"scale = {_SCALE}", 'runsOn = ["bench"]'])


async def _queue(http: httpx.AsyncClient, plane: Plane, agent: str) -> tuple[str, float]:
    sent = time.time()
    made = await http.post(f"{plane.url}/control/runs", json={"agent": agent}, headers=plane.auth())
    if made.status_code != 202:
        raise RuntimeError(f"queueing a run of {agent}: {made.status_code} {made.text}")
    return str(made.json()["item"]["id"]), sent


async def _stamp(out: Path, item: str, timeout: float = 60.0) -> float:
    path = out / item
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = path.read_text().strip()
            if text:
                return float(text)
        if time.monotonic() > deadline:
            raise RuntimeError(f"item {item} did not start within {timeout:g} s")
        await asyncio.sleep(0.001)


async def _ended(url: str, agent: str, items: set[str], timeout: float = 300.0) -> float:
    """The latest end time (epoch seconds) of the runs of ``items``, once all ended."""
    deadline = time.monotonic() + timeout
    async with await open_store(url) as store:
        while True:
            runs = await store.list_runs(agent=agent, limit=100_000)
            done = [r for r in runs if str(r.item_id) in items and r.ended_at is not None]
            if len({r.item_id for r in done}) >= len(items):
                bad = [r for r in done if r.state.value != "succeeded"]
                if bad:
                    raise RuntimeError(f"{len(bad)} run(s) did not succeed: {bad[0]}")
                return max(_epoch(r.ended_at) for r in done)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{agent}: only {len(done)} of {len(items)} runs ended")
            await asyncio.sleep(0.2)


async def _parts(url: str, agent: str, waits: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Where the latency goes: enqueue to claim (the run row is made by the claim) and
    claim to exec, from the store's times."""
    await _ended(url, agent, set(waits))
    async with await open_store(url) as store:
        runs = {str(r.item_id): r for r in await store.list_runs(agent=agent, limit=100_000)}
    claimed = [_epoch(runs[i].created_at) for i in waits]
    started = [_epoch(runs[i].started_at) for i in waits]
    return {
        "to_claim_ms": summarize_ms(
            [c - t for c, (t, _) in zip(claimed, waits.values(), strict=True)]
        ),
        "claim_to_exec_ms": summarize_ms(
            [s - c for c, (_, s) in zip(claimed, waits.values(), strict=True)]
        ),
        # claim -> exec in two: the run's preparation and launch (to the mark as
        # running, asked once its first process has started), then the process's own
        # start (the cgroup stub, the shell, the stamp program)
        "claim_to_started_ms": summarize_ms([m - c for c, m in zip(claimed, started, strict=True)]),
        "started_to_exec_ms": summarize_ms(
            [s - m for m, (_, s) in zip(started, waits.values(), strict=True)]
        ),
    }


def _epoch(when: dt.datetime | None) -> float:
    assert when is not None
    return when.replace(tzinfo=when.tzinfo or dt.UTC).timestamp()


#: How runs' processes enter their cgroups (``--spawn``): the environment that asks for it.
SPAWN_ENV = {"direct": {}, "stub": {"CORRAL_SPAWN_DIRECT": "0"}}


async def measure_runs(
    store: str, latency_n: int, burst: int, where: Path | None = None, spawn: str = "direct"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-fleet-bench-", dir=where) as tmp:
        base = Path(tmp)
        out = base / "stamps"
        out.mkdir()
        root = base / "project"
        _runs_project(root, out)
        async with (
            store_url(store, base) as url,
            control_plane(root, base, url, more_env=SPAWN_ENV[spawn]) as plane,
            runners(plane, base, _RUNNERS, SPAWN_ENV[spawn]) as pids,
            httpx.AsyncClient(timeout=60) as http,
        ):
            # warm-up: every runner fetches the bundle and runs once
            warm = [await _queue(http, plane, a) for a in ["remote"] * 9 + ["local"] * 3]
            for item, _ in warm:
                await _stamp(out, item, 120.0)
            await _ended(url, "remote", {i for i, _ in warm[:9]})
            figures: dict[str, Any] = {"runner_pids": pids}
            for agent in ("local", "remote"):
                waits: dict[str, tuple[float, float]] = {}  # item -> (sent, stamp)
                for _ in range(latency_n):
                    item, sent = await _queue(http, plane, agent)
                    waits[item] = (sent, await _stamp(out, item))
                    await asyncio.sleep(0.05)  # the run ends; its runner asks again
                figures[f"{agent}_latency"] = summarize_ms([s - t for t, s in waits.values()])
                figures[f"{agent}_latency_parts"] = await _parts(url, agent, waits)
            for agent in ("local", "remote"):
                figures[f"{agent}_throughput"] = await _throughput(http, plane, url, agent, burst)
        figures.pop("runner_pids")
        return figures


async def _throughput(
    http: httpx.AsyncClient, plane: Plane, url: str, agent: str, n: int
) -> dict[str, Any]:
    await asyncio.sleep(1.0)  # the latency runs end
    cpu_before = _cpu_seconds(plane.pid)
    start = time.time()
    gate = asyncio.Semaphore(8)

    async def one() -> str:
        async with gate:
            item, _ = await _queue(http, plane, agent)
            return item

    items = set(await asyncio.gather(*(one() for _ in range(n))))
    last = await _ended(url, agent, items)
    cpu = _cpu_seconds(plane.pid) - cpu_before
    elapsed = last - start
    return {
        "runs": n,
        "seconds": round(elapsed, 3),
        "runs_per_s": round(n / elapsed, 2),
        "cp_cpu_ms_per_run": round(1000 * cpu / n, 2),
    }


# --------------------------------------------------------------------------- raw HTTP


class RawPool:
    """Keep-alive HTTP/1.1 over ``size`` connections, one worker each, fed from one
    queue: cheap enough on the client that a 2-core machine can offer 1,000 runners'
    heartbeats (an httpx client with a thousand waiting tasks cannot)."""

    def __init__(self, url: str, size: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.size = host, int(port), size
        self.jobs: asyncio.Queue[tuple[bytes, asyncio.Future[tuple[int, bytes]]]] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> RawPool:
        self.workers = [asyncio.create_task(self._worker()) for _ in range(self.size)]
        return self

    async def __aexit__(self, *_: object) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)

    def post(self, path: str, body: bytes, token: str) -> asyncio.Future[tuple[int, bytes]]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.jobs.put_nowait((head.encode() + body, done))
        return done

    async def _worker(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            request, done = await self.jobs.get()
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(request)
                status, body, close = await _response(reader)
                if close:
                    writer.close()
                    reader = writer = None
                done.set_result((status, body))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if writer is not None:
                    writer.close()
                reader = writer = None
                done.set_exception(exc)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status = int((await reader.readuntil(b"\r\n")).split()[1])
    length, close = 0, False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "connection":
            close = value.strip().lower() == "close"
        elif name.lower() == "transfer-encoding":
            raise ValueError("a chunked answer: not expected from the runner API")
    return status, await reader.readexactly(length), close


# --------------------------------------------------------------------------- part 2: sim


def _sim_project(root: Path, runners: int, busy: int) -> None:
    root.mkdir(parents=True)
    (root / "config.toml").write_text(
        f"maxRunners = {runners + 10}\n[fleet]\nheartbeatSeconds = 5\nofflineAfterSeconds = 15\n"
    )
    _agent(root, "sim", ["/bin/true"], [f"scale = {1000 + runners * busy}", "runsOn = []"])


async def measure_sim(
    store: str,
    runners: int,
    seconds: float,
    interval: float,
    claimers: int,
    rate: float,
    busy: int = 0,
    rollout: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-fleet-sim-") as tmp:
        base = Path(tmp)
        root = base / "project"
        _sim_project(root, runners, busy)
        # Busy runners: a lease long enough that the runs claimed first do not lapse
        # while the last runners claim theirs (the heartbeats renew them after).
        lease = _BUSY_LEASE if busy else None
        async with (
            store_url(store, base) as url,
            control_plane(root, base, url, lease) as plane,
        ):
            upgrade = url if rollout else None
            return await _sim(plane, runners, seconds, interval, claimers, rate, busy, upgrade)


async def _hold(
    plane: Plane, http: httpx.AsyncClient, credentials: list[str], busy: int
) -> list[list[dict[str, Any]]]:
    """Each runner claims ``busy`` runs (queued first) and holds them: what its
    heartbeats report (``running``), so that every heartbeat renews leases."""
    gate = asyncio.Semaphore(16)

    async def enqueue() -> None:
        async with gate:
            await _queue(http, plane, "sim")

    await asyncio.gather(*(enqueue() for _ in range(len(credentials) * busy)))
    held: list[list[dict[str, Any]]] = [[] for _ in credentials]

    async def claim(i: int) -> None:
        headers = {"Authorization": f"Bearer {credentials[i]}"}
        async with gate:
            while len(held[i]) < busy:
                answer = await http.post(
                    f"{plane.url}/fleet/v1/work",
                    json={"free": busy - len(held[i]), "wait": 1},
                    headers=headers,
                )
                answer.raise_for_status()
                for given in answer.json().get("runs", []):
                    run = given["run"]
                    held[i].append({"runId": run["id"], "fence": run["fence"]})

    await asyncio.gather(*(claim(i) for i in range(len(credentials))))
    return held


async def _sim(
    plane: Plane,
    runners: int,
    seconds: float,
    interval: float,
    claimers: int,
    rate: float,
    busy: int = 0,
    upgrade: str | None = None,
) -> dict[str, Any]:
    """``upgrade``: the store's URL, to start a rollout on once the runners joined."""
    pid = plane.pid
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(timeout=60.0, limits=limits) as http,
        httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=claimers + 8)) as poll,
    ):
        gate = asyncio.Semaphore(16)
        credentials: list[str] = [""] * runners
        joins: list[float] = []

        async def join(i: int) -> None:
            async with gate:
                token = await _token(http, plane, [])
                body = {
                    "token": token,
                    "name": f"sim{i}",
                    "hostname": f"sim{i}",
                    "version": "0",
                    "slots": busy + 1,  # its held runs, and one for the claims phase
                }
                started = time.perf_counter()
                answer = await http.post(f"{plane.url}/fleet/v1/join", json=body)
                joins.append(time.perf_counter() - started)
            answer.raise_for_status()
            credentials[i] = answer.json()["credential"]

        await asyncio.gather(*(join(i) for i in range(runners)))
        held = await _hold(plane, http, credentials, busy) if busy else [[]] * runners
        if upgrade is not None:
            async with await open_store(upgrade) as store:
                await fleet_upgrade.start_rollout(
                    store, target="9.9.9", index="https://example.invalid/simple", actor="bench"
                )
        bodies = [
            json.dumps({"version": "0", "running": runs} if runs else {"version": "0"}).encode()
            for runs in held
        ]
        rss_joined = _rss_mib(pid)
        idle_from = _cpu_seconds(pid)
        await asyncio.sleep(_IDLE_SECONDS)
        idle_rate = (_cpu_seconds(pid) - idle_from) / _IDLE_SECONDS

        loop = asyncio.get_running_loop()
        start = loop.time()
        stop_at = start + 2 * seconds  # phase 1, then phase 2 (queueing runs)
        beats: list[tuple[float, float]] = []  # (when, latency)
        lags: list[float] = []  # how late the client sent (it is busy too)
        failures = gone = 0

        async def one(i: int, due: float) -> None:
            nonlocal failures, gone
            sent = time.perf_counter()
            lags.append(max(0.0, loop.time() - due))
            try:
                status, answer = await raw.post("/fleet/v1/heartbeat", bodies[i], credentials[i])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failures += 1
            else:
                beats.append((loop.time(), time.perf_counter() - sent))
                failures += status != 200
                if status == 200 and held[i]:
                    gone += len(json.loads(answer)["gone"])  # held runs that lapsed

        async def beat() -> None:
            """Every runner's heartbeat every ``interval``, spread evenly."""
            pending: set[asyncio.Task[None]] = set()
            tick, n = interval / runners, 0
            while (due := start + n * tick) < stop_at:
                await asyncio.sleep(max(0.0, due - loop.time()))
                task = asyncio.create_task(one(n % runners, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
            await asyncio.gather(*pending)

        raw = await RawPool(plane.url, 32).__aenter__()
        beating = asyncio.create_task(beat())
        cpu0 = _cpu_seconds(pid)
        await asyncio.sleep(max(0.0, start + seconds - loop.time()))
        cpu1 = _cpu_seconds(pid)
        rss_beating = _rss_mib(pid)
        mid = loop.time()
        claims = await _claims(plane, http, poll, credentials[:claimers], stop_at, rate)
        await beating
        await raw.__aexit__()
        rss_end = _rss_mib(pid)

    phase1 = [lat for when, lat in beats if when <= mid]
    phase2 = [lat for when, lat in beats if when > mid]
    cpu_share = (cpu1 - cpu0) / (mid - start)
    achieved = len(phase1) / (mid - start)
    per_beat_ms = 1000 * max(0.0, cpu1 - cpu0 - idle_rate * (mid - start)) / max(1, len(phase1))
    return {
        "runners": runners,
        "busy": busy,
        "rollout": upgrade is not None,
        "held_runs_gone": gone,
        "join_ms": summarize_ms(joins),
        "idle_cpu_share": round(idle_rate, 3),
        "beats": {
            "offered_per_s": round(runners / interval, 1),
            "achieved_per_s": round(achieved, 1),
            "heartbeat_ms": summarize_ms(phase1),
            "client_lag_ms": summarize_ms(lags),
            "cpu_share": round(cpu_share, 3),
            "cpu_ms_per_heartbeat": round(per_beat_ms, 3),
            "cpu_share_at_offered_rate": round(
                idle_rate + per_beat_ms * runners / interval / 1000, 3
            ),
            "rss_mib": rss_beating,
        },
        "with_claims": {
            "claimers": claimers,
            "claimed_per_s": round(claims["claimed"] / seconds, 2),
            "claim_ms": summarize_ms(claims["latency"]),
            "work_request_ms": summarize_ms(claims["request"]),
            "heartbeat_ms": summarize_ms(phase2),
            "cpu_share": round((claims["cpu_queued"] - cpu1) / (claims["queued_at"] - mid), 3),
            "unclaimed": claims["unclaimed"],
            # after the heartbeats, the long polls waiting with nothing queued: the
            # share of one core, and over the idle share, per waiting runner
            "cpu_share_polls_waiting": round(claims["waiting_share"], 3),
            "cpu_share_per_waiting_poll": round(
                max(0.0, claims["waiting_share"] - idle_rate) / claimers, 4
            ),
            "rss_mib": rss_end,
        },
        "rss_joined_mib": rss_joined,
        "failures": failures + claims["failures"],
    }


async def _claims(
    plane: Plane,
    http: httpx.AsyncClient,
    poll: httpx.AsyncClient,
    credentials: list[str],
    stop_at: float,
    rate: float,
) -> dict[str, Any]:
    """``credentials``' runners long-poll for work while ``rate`` runs/s are queued until
    ``stop_at``; each run claimed is ended with its fence at once."""
    loop = asyncio.get_running_loop()
    queued: dict[str, float] = {}  # item id -> wall time before its POST
    arrived: dict[str, float] = {}
    requests: list[float] = []
    failures = 0
    done = asyncio.Event()

    async def claimer(credential: str) -> None:
        nonlocal failures
        headers = {"Authorization": f"Bearer {credential}"}
        while not done.is_set():
            sent = time.perf_counter()
            try:
                answer = await poll.post(
                    f"{plane.url}/fleet/v1/work", json={"free": 1, "wait": 5}, headers=headers
                )
            except httpx.TransportError:
                failures += 1
                continue
            now = time.time()
            if answer.status_code != 200:
                failures += 1
                await asyncio.sleep(0.5)
                continue
            for given in answer.json().get("runs", []):
                requests.append(time.perf_counter() - sent)
                arrived[str(given["item"]["id"])] = now
                run = given["run"]
                ended = await poll.post(
                    f"{plane.url}/fleet/v1/runs/{run['id']}/end",
                    json={"fence": run["fence"], "state": "succeeded", "exitCode": 0},
                    headers=headers,
                )
                failures += ended.status_code != 200

    async def enqueue() -> None:
        item, sent = await _queue(http, plane, "sim")
        queued[item] = sent

    polling = [asyncio.create_task(claimer(c)) for c in credentials]
    await asyncio.sleep(0.5)  # the long polls are waiting
    at = loop.time()
    queueing: list[asyncio.Task[None]] = []
    while at < stop_at:  # open loop: the rate holds however long a POST takes
        await asyncio.sleep(max(0.0, at - loop.time()))
        queueing.append(asyncio.create_task(enqueue()))
        at += 1.0 / rate
    await asyncio.gather(*queueing)
    cpu_queued, queued_at = _cpu_seconds(plane.pid), loop.time()
    deadline = loop.time() + 10.0
    while len(arrived.keys() & queued.keys()) < len(queued) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    # nothing queued, heartbeats over: what the waiting long polls alone cost
    cpu_from, waited_from = _cpu_seconds(plane.pid), loop.time()
    await asyncio.sleep(_IDLE_SECONDS)
    waiting_share = (_cpu_seconds(plane.pid) - cpu_from) / (loop.time() - waited_from)
    done.set()
    await asyncio.gather(*polling)  # each ends when its long poll answers (<= 5 s)
    latency = [arrived[i] - queued[i] for i in queued if i in arrived]
    return {
        "claimed": len(latency),
        "latency": latency,
        "request": requests,
        "unclaimed": len(queued) - len(latency),
        "failures": failures,
        "waiting_share": waiting_share,
        "cpu_queued": cpu_queued,
        "queued_at": queued_at,
    }


# --------------------------------------------------------------------------- main


def _runs_rows(store: str, f: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for agent, where in (("local", "control plane"), ("remote", f"{_RUNNERS} runners")):
        lat, thr = f[f"{agent}_latency"], f[f"{agent}_throughput"]
        rows.append(
            [
                store,
                where,
                lat["p50_ms"],
                lat["p99_ms"],
                f[f"{agent}_latency_parts"]["to_claim_ms"]["p50_ms"],
                f[f"{agent}_latency_parts"]["claim_to_exec_ms"]["p50_ms"],
                f[f"{agent}_latency_parts"]["claim_to_started_ms"]["p50_ms"],
                f[f"{agent}_latency_parts"]["started_to_exec_ms"]["p50_ms"],
                thr["runs_per_s"],
                thr["cp_cpu_ms_per_run"],
            ]
        )
    return rows


def _spawn_rows(store: str, ways: dict[str, dict[str, Any]], spawn: str) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for way, merged in ways.items():
        rows += _runs_rows(store if spawn != "both" else f"{store} ({way})", merged)
    return rows


def _sim_row(store: str, f: dict[str, Any]) -> list[Any]:
    b, c = f["beats"], f["with_claims"]
    return [
        store, f["runners"], f["busy"], b["achieved_per_s"], b["heartbeat_ms"]["p50_ms"],
        b["heartbeat_ms"]["p99_ms"], b["cpu_share"], f["idle_cpu_share"],
        b["cpu_ms_per_heartbeat"], b["cpu_share_at_offered_rate"], b["rss_mib"],
        c["claim_ms"]["p50_ms"], c["claim_ms"]["p99_ms"], c["heartbeat_ms"]["p99_ms"],
        c["cpu_share"], f["failures"] + c["unclaimed"] + f["held_runs_gone"],
    ]  # fmt: skip


async def _runs_part(
    result: Result, store: str, reps: int, latency_n: int, burst: int, where: Path, spawn: str
) -> dict[str, dict[str, Any]]:
    """The runs part ``reps`` times for each way of spawning in ``spawn`` (``both``: stub
    and direct interleaved, the order swapped every rep); medians per way."""
    ways = ["stub", "direct"] if spawn == "both" else [spawn]
    done: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    for rep in range(reps):
        for way in ways if rep % 2 == 0 else ways[::-1]:
            figures = await measure_runs(store, latency_n, burst, where, way)
            result.runs.append(
                {"part": "runs", "store": store, "rep": rep, "spawn": way, **figures}
            )
            done[way].append(figures)
    return {
        way: _merge_runs(result, f"runs_{store}" + ("" if way == "direct" else f"_{way}"), d)
        for way, d in done.items()
    }


def _merge_runs(result: Result, key: str, done: list[dict[str, Any]]) -> dict[str, Any]:
    merged = median_of_runs(done)
    for agent in ("local", "remote"):
        merged[f"{agent}_latency"]["p99_ms_max_over_reps"] = max(
            r[f"{agent}_latency"]["p99_ms"] for r in done
        )
    merged["remote_over_local_runs_per_s"] = round(
        merged["remote_throughput"]["runs_per_s"] / merged["local_throughput"]["runs_per_s"], 2
    )
    result.figures[key] = merged
    return merged


async def _sim_part(
    result: Result, store: str, args: argparse.Namespace, runners: int, seconds: float
) -> dict[str, Any]:
    done = []
    for rep in range(args.reps):
        figures = await measure_sim(
            store,
            runners,
            seconds,
            args.interval,
            args.claimers,
            args.rate,
            args.busy,
            args.rollout,
        )
        result.runs.append({"part": "sim", "store": store, "rep": rep, **figures})
        done.append(figures)
    merged = median_of_runs(done)
    result.figures[f"sim_{store}"] = merged
    return merged


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, under 2 min")
    parser.add_argument("--only", choices=["runs", "sim"], help="one part only")
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, help="runs per agent, one at a time (60)")
    parser.add_argument("--burst", type=int, help="runs per agent queued at once (150)")
    parser.add_argument("--runners", type=int, help="simulated runners (1000)")
    parser.add_argument("--seconds", type=float, help="each sim phase (15)")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--claimers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="runs/s queued for claimers")
    parser.add_argument(
        "--busy", type=int, default=0, help="sim: runs each runner holds (its heartbeats renew)"
    )
    parser.add_argument(
        "--rollout", action="store_true", help="sim: a fleet upgrade runs all along"
    )
    parser.add_argument(
        "--spawn",
        choices=["direct", "stub", "both"],
        default="direct",
        help="runs part: how runs' processes enter their cgroups: straight (clone3, where "
        "available), through the stub (CORRAL_SPAWN_DIRECT=0), or both interleaved",
    )
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/results/)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the runs part's project lives (default /var/tmp: a project under /tmp "
        "keeps its host runs on the host's /tmp, which real projects do not)",
    )
    args = parser.parse_args()
    quick = args.quick
    latency_n = args.latency_runs or (8 if quick else 60)
    burst = args.burst or (24 if quick else 150)
    sim_runners = args.runners or (200 if quick else 1000)
    seconds = args.seconds or (5.0 if quick else 15.0)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if quick and args.stores == parser.get_default("stores"):
        stores = ["postgresql"]
    if not set(stores) <= {"sqlite", "postgresql"} or not 1 <= args.reps <= 10:
        parser.error("--stores from sqlite,postgresql; --reps 1..10")
    if not 1 <= sim_runners <= 5000 or not 1 <= seconds <= 120 or burst > 2000:
        parser.error("--runners 1..5000, --seconds 1..120, --burst <= 2000")
    if not 1 <= args.claimers <= min(200, sim_runners) or not 0.1 <= args.rate <= 200:
        parser.error("--claimers 1..min(200, runners), --rate 0.1..200")
    if not 0 <= args.busy <= 16:
        parser.error("--busy 0..16")
    params = vars(args) | {
        "dir": str(args.dir),
        "latency_runs": latency_n,
        "burst": burst,
        "runners": sim_runners,
        "seconds": seconds,
        "stores": stores,
        "out": str(args.out or ""),
    }
    result = Result("fleet", params=params)
    runs_rows: list[list[Any]] = []
    sim_rows: list[list[Any]] = []
    for store in stores:
        if args.only in (None, "runs"):
            ways = await _runs_part(
                result, store, args.reps, latency_n, burst, args.dir, args.spawn
            )
            runs_rows += _spawn_rows(store, ways, args.spawn)
        if args.only in (None, "sim"):
            merged = await _sim_part(result, store, args, sim_runners, seconds)
            sim_rows.append(_sim_row(store, merged))
    if runs_rows:
        print_table(
            f"runs: dispatch latency (enqueue to exec, one at a time) and throughput ({burst} "
            f"runs queued at once; scale {_SCALE} on the control plane, {_RUNNERS} runners x "
            f"{_SLOTS} slots)",
            [
                "store",
                "where",
                "latency p50 ms",
                "p99 ms",
                "to claim p50",
                "claim to exec p50",
                "(to started",
                "started to exec)",
                "runs/s",
                "cp cpu ms/run",
            ],
            runs_rows,
        )
    if sim_rows:
        print_table(
            f"simulated fleet: heartbeats every {args.interval:g} s; then {args.claimers} "
            f"long-polling claimers at {args.rate:g} runs/s",
            ["store", "runners", "runs held each", "beats/s", "beat p50", "beat p99", "cpu/core",
             "idle/core", "cpu ms/beat", "cpu at offered", "rss MiB", "claim p50", "claim p99",
             "beat p99 (claims)", "cpu/core (claims)", "failed"],
            sim_rows,
        )  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        print(f"written to {args.out}")
    else:
        print(f"written to {result.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
