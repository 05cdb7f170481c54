"""Resource-lock benchmark: corral's gateway locks (``rlock``) against Redis, in the same run.

The gateway is served in this process, as ``corral start`` serves it: a ``Scheduler``
(started, not dispatching) over a fresh store, ``create_app`` on uvicorn/httptools, and
live runs made straight in the store (enqueue, claim, mark running, a secret issued by
the scheduler's link). Nothing is spawned for the runs; the load comes from separate
processes, so the gateway process's CPU is its own. Figures (medians of ``--reps``):

* command latency: from a ``bash`` loop started with a run's environment (the installed
  commands first on ``PATH``, ``GATEWAY_URL``, ``CORRAL_RUN_SECRET``), the wall time of
  ``rlock KEY; runlock KEY`` taken with ``$EPOCHREALTIME`` (no fork), so both commands'
  process start is included; p50/p90/p99 of the pair. For scale, the same loop timing two
  bare ``python -SI -c pass`` starts (the commands' interpreter): the floor.
* throughput: one load-generator process (aiohttp) with 32 workers, each a live run with
  its own keep-alive connection, looping acquire + release on keys of its own (no
  conflicts); completed pairs/s over the measured window after a warm-up; every answer
  must be 200 with ``"ok":true``. The gateway process's CPU (all its threads) over the
  window. The peer, in another process: ``redis.asyncio`` at 32 connections, ``SET key
  val NX PX 30000`` + a compare-and-delete Lua script; corral/Redis as a ratio per store.
  And Redis from its C client, ``redis-benchmark`` (32 connections, no pipelining): plain
  ``SET`` (the figure usually quoted), ``SET NX PX`` on fresh keys, the compare-and-delete
  ``EVAL``, and the pair rate they imply (one of each in turn per connection:
  1 / (1/set + 1/del)); the deletes mostly find no key, so that is an upper bound.
* durability, read from each side and printed: corral's SQLite ``synchronous`` and
  ``journal_mode`` (from a store's own connection), PostgreSQL's ``synchronous_commit``
  and ``fsync``, Redis's ``appendonly`` and ``save`` (empty: nothing on disk).
* contention: 200 live runs (200 aiohttp workers in one process) try-lock random keys of
  1,000, hold a granted one 1-5 ms, release it. Checked on the client: no grant for a key
  while another worker holds it and has not yet sent its release (double grant), and
  fencing tokens strictly increasing per key in grant-arrival order.

``.venv/bin/python bench/locks.py --help``; ``--loadgen`` is the internal entry point of
the load-generator processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import (
    DEFAULT_PG_DSN,
    Result,
    _cpu_jiffies,
    fresh_database,
    median_of_runs,
    print_comparison,
    print_table,
    summarize_ms,
    wait_for_quiet,
)

if TYPE_CHECKING:
    from corral.scheduler.service import Scheduler

# corral, aiohttp and redis are imported where used: the load-generator processes run this
# file too, and should start without importing the gateway's stack.

PYTHON = sys.executable
AGENT = "bench"
TOKEN = "bench-operator-token"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Compare-and-delete: release only what this holder set (the usual Redis lock recipe).
REDIS_RELEASE = (
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end"
)
# Other processes using more than this (% of one core) in a window get a note in the JSON.
BUSY_OTHERS = 50.0
STORE_ALIASES = {"sqlite": "sqlite", "postgresql": "postgresql", "pg": "postgresql"}

# The latency loop. $EPOCHREALTIME (bash 5) reads the clock without a fork; LC_ALL=C keeps
# its decimal point a dot. Mode "floor" starts the commands' interpreter bare instead.
LATENCY_SCRIPT = r"""
set -u
n=$1 key=$2 mode=$3
for ((i = 0; i < n; i++)); do
  if [[ $mode == floor ]]; then
    t0=$EPOCHREALTIME; "$PYBIN" -SI -c pass; t1=$EPOCHREALTIME; "$PYBIN" -SI -c pass
  else
    t0=$EPOCHREALTIME
    rlock "$key" >/dev/null; rc=$?
    if ((rc)); then echo "rlock exited $rc" >&2; exit 1; fi
    t1=$EPOCHREALTIME
    runlock "$key" >/dev/null; rc=$?
    if ((rc)); then echo "runlock exited $rc" >&2; exit 1; fi
  fi
  t2=$EPOCHREALTIME
  echo "$t0 $t1 $t2"
done
"""

# --------------------------------------------------------------------------- the gateway


def write_project(root: Path, state_url: str, *, scale: int) -> None:
    """A project with one agent ``bench`` at ``scale`` (its command is never run)."""
    (root / "agents" / AGENT).mkdir(parents=True)
    (root / "config.toml").write_text(f'[state]\nurl = "{state_url}"\n')
    (root / "agents" / AGENT / "SKILL.md").write_text(f"---\nname: {AGENT}\n---\nbench\n")
    (root / "agents" / AGENT / "config.toml").write_text(
        f"scale = {scale}\ntimeout = 3600\nmaxWorkQueueSize = {scale + 100}\n"
        '[harness]\ncommand = ["/bin/true"]\n'
    )


@dataclass
class Gateway:
    url: str
    secrets: list[str]
    bin_dir: Path

    def run_env(self, index: int = 0) -> dict[str, str]:
        """The environment a run's processes see, as far as the commands care."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["GATEWAY_URL"] = self.url
        env["CORRAL_RUN_SECRET"] = self.secrets[index]
        env["LC_ALL"] = "C"
        env["PYBIN"] = os.path.realpath(PYTHON)
        return env


@contextlib.asynccontextmanager
async def state_url_for(store: str, tmp: Path, dsn: str) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp / 'state.db'}"
    else:
        async with fresh_database(dsn, prefix="bench_locks") as url:
            yield url


async def live_runs(scheduler: Scheduler, count: int) -> list[str]:
    """``count`` runs in state running, each with a secret the gateway knows."""
    from corral.store import ItemState, NewItem, TriggerKind

    store = scheduler.store
    for _ in range(count):
        res = await store.enqueue(NewItem(agent=AGENT, trigger=TriggerKind.MANUAL))
        if res.item.state is not ItemState.QUEUED:
            raise RuntimeError(f"enqueue: {res.item.state} {res.item.reason}")
    claims = await store.claim(scheduler.id, lease_seconds=3600, limit=count)
    if len(claims) != count:
        raise RuntimeError(f"claimed {len(claims)} runs of {count}")
    secrets = []
    for claim in claims:
        await store.mark_run_running(claim.run.id, pid=None, host=None)
        secret, ref = scheduler.link.issue(claim.run.id, claim.run.agent, "manual")
        await store.set_run_secret(claim.run.id, ref.secret_hash)
        secrets.append(secret)
    return secrets


@contextlib.asynccontextmanager
async def gateway(store_kind: str, dsn: str, runs: int) -> AsyncIterator[Gateway]:
    """A fresh store, a started scheduler with ``runs`` live runs, its gateway served."""
    from corral.gateway.app import create_app
    from corral.gateway.server import GatewayServer, bind
    from corral.project import load_project
    from corral.scheduler.service import Scheduler
    from corral.store import open_store

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-locks-"))
    try:
        async with state_url_for(store_kind, tmp, dsn) as state_url:
            root = tmp / "project"
            write_project(root, state_url, scale=runs)
            project = load_project(root)
            store = await open_store(state_url)
            try:
                sock = bind("127.0.0.1", 0)
                url = f"http://127.0.0.1:{sock.getsockname()[1]}"
                scheduler = Scheduler(project, store, gateway_url=url)
                await scheduler.start()
                secrets = await live_runs(scheduler, runs)
                assert scheduler.link.bin_dir is not None
                server = GatewayServer.for_app(create_app(scheduler, TOKEN))
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                try:
                    yield Gateway(url, secrets, scheduler.link.bin_dir)
                finally:
                    server.should_exit = True
                    await serving
            finally:
                await store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- CPU sampling


def _procs_named(name: str) -> list[Any]:
    import psutil

    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def _cpu_of(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(Exception):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class CpuWindow:
    """CPU used between the load generator's "measure" and "done" lines, in % of one core
    (200 = both cores of a 2-core machine): this process (the gateway, all its threads),
    processes named ``peers`` (the database or Redis server), and the whole machine, from
    which what other processes used is estimated (short-lived ones included, unlike
    ``ForeignCpu``)."""

    def __init__(self, peers: tuple[str, ...] = ()) -> None:
        self.peers = peers
        self._procs: list[Any] = []
        self._t0 = self._own0 = self._peer0 = 0.0
        self._jiffies0 = (0, 0)
        self.own = self.peer = self.machine = math.nan

    def mark(self, phase: str) -> None:
        now, own = time.perf_counter(), time.process_time()
        if phase == "measure":
            self._procs = [p for name in self.peers for p in _procs_named(name)]
            self._t0, self._own0, self._peer0 = now, own, _cpu_of(self._procs)
            self._jiffies0 = _cpu_jiffies()
        elif phase == "done" and self._t0:
            wall = now - self._t0
            self.own = round(100 * (own - self._own0) / wall, 1)
            self.peer = round(100 * (_cpu_of(self._procs) - self._peer0) / wall, 1)
            total, idle = (x1 - x0 for x1, x0 in zip(_cpu_jiffies(), self._jiffies0, strict=True))
            busy = (total - idle) / total if total > 0 else math.nan
            self.machine = round(100 * busy * (os.cpu_count() or 1), 1)

    def others(self, client: float) -> float:
        """Machine CPU not used by the gateway, the server or the load generator."""
        return round(self.machine - self.own - self.peer - client, 1)


async def load(
    mode: str, config: dict[str, Any], peers: tuple[str, ...], timeout: float
) -> tuple[dict[str, Any], CpuWindow]:
    """A load generator's figures and the CPU used meanwhile."""
    cpu = CpuWindow(peers)
    res = await run_loadgen(mode, config, cpu.mark, timeout)
    res["others_cpu_percent"] = cpu.others(res["client_cpu_percent"])
    return res, cpu


async def run_loadgen(
    mode: str, config: dict[str, Any], on_phase: Callable[[str], None], timeout: float
) -> dict[str, Any]:
    """This script with ``--loadgen mode`` in a new process; ``config`` on its stdin."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        os.path.abspath(__file__),
        "--loadgen",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(config).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    result: dict[str, Any] | None = None

    async def read() -> None:
        nonlocal result
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("result "):
                result = json.loads(line[len("result ") :])
            elif line:
                on_phase(line)

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise RuntimeError(f"load generator {mode} did not finish within {timeout:.0f} s") from None
    finally:
        await proc.wait()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"load generator {mode} failed (exit {proc.returncode})")
    return result


# --------------------------------------------------------------------------- measurements


async def measure_command(gw: Gateway, iterations: int, warmup: int) -> dict[str, Any]:
    """``rlock k; runlock k`` from a bash loop in a run's environment, and the floor."""
    out: dict[str, Any] = {}
    for mode, n in (("cmd", iterations), ("floor", max(20, iterations // 4))):
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            LATENCY_SCRIPT,
            "latency",
            str(n + warmup),
            "bench://latency/k",
            mode,
            env=gw.run_env(0),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"latency loop failed: {stderr.decode(errors='replace')[-500:]}")
        rows = [[float(x) for x in line.split()] for line in stdout.decode().splitlines()]
        rows = rows[warmup:]
        pair = summarize_ms([t2 - t0 for t0, _, t2 in rows])
        if mode == "cmd":
            out["pair"] = pair
            out["rlock_p50_ms"] = summarize_ms([t1 - t0 for t0, t1, _ in rows])["p50_ms"]
            out["runlock_p50_ms"] = summarize_ms([t2 - t1 for _, t1, t2 in rows])["p50_ms"]
        else:
            out["floor_pair_p50_ms"] = pair["p50_ms"]
    return out


async def measure_redis_benchmark(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    """Redis's own C load generator: requests/s of SET, SET NX PX, compare-and-delete."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    await client.aclose()
    base = ["redis-benchmark", "-h", str(kwargs.get("host", "127.0.0.1"))]
    base += ["-p", str(kwargs.get("port", 6379)), "-n", str(requests), "-c", str(concurrency)]
    base += ["--csv"]
    key = "corral-bench:lock:__rand_int__"  # 10^9 keys: fresh ones; they expire in 30 s
    runs = {
        "set": [*base, "-t", "set"],
        "set_nx_px": [*base, "-r", "1000000000", "SET", key, "v", "NX", "PX", "30000"],
        "compare_and_delete": [*base, "-r", "1000000000", "EVAL", REDIS_RELEASE, "1", key, "v"],
    }
    out: dict[str, Any] = {"concurrency": concurrency, "requests": requests}
    for name, argv in runs.items():
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"redis-benchmark {name}: {stderr.decode(errors='replace')}")
        # --csv: a header line, then "test","rps","avg_latency_ms","min",..,"p50",..
        rows = [row for row in csv.reader(stdout.decode().splitlines()) if row]
        fields = rows[-1]
        out[f"{name}_per_s"] = float(fields[1])
        out[f"{name}_p50_ms"] = float(fields[4])
    out["pairs_per_s"] = round(
        1 / (1 / out["set_nx_px_per_s"] + 1 / out["compare_and_delete_per_s"]), 1
    )
    return out


PGBENCH_PAIR = """\\set k random(1, 16)
SELECT outcome FROM corral_rlock('pgb/' || :client_id || '/' || :k,
    (SELECT id FROM bench_runs WHERE n = :client_id), NULL, 60, 30);
SELECT corral_runlock('pgb/' || :client_id || '/' || :k,
    (SELECT id FROM bench_runs WHERE n = :client_id), NULL);
"""


async def measure_pg_ceiling(dsn: str, concurrency: int, duration: float) -> dict[str, Any]:
    """The database's own ceiling for acquire + release pairs: ``pgbench`` (C, prepared
    statements, no corral process in the way) calling the two lock functions, with
    ``concurrency`` connections, each a live run on keys of its own, as the gateway's
    workers do. The gateway's figure over this one is the share corral's Python keeps."""
    from corral.store import NewRun, TriggerKind, open_store

    pgbench = shutil.which("pgbench") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None
    )
    if pgbench is None:
        return {"note": "pgbench not found"}
    async with fresh_database(dsn, prefix="bench_pgb") as url:
        store = await open_store(url)
        try:
            for _ in range(concurrency):
                await store.create_run(NewRun(agent=AGENT, trigger=TriggerKind.MANUAL))
        finally:
            await store.close()
        import psycopg

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE bench_runs AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id"
                " FROM corral_runs"
            )
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write(PGBENCH_PAIR)
        try:
            proc = await asyncio.create_subprocess_exec(
                pgbench, "-n", "-M", "prepared", "-f", script.name, "-c", str(concurrency),
                "-j", "2", "-T", str(max(1, round(duration))), "-d", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            stdout, stderr = await proc.communicate()
        finally:
            os.unlink(script.name)
    text = stdout.decode()
    if proc.returncode != 0 or "tps = " not in text:
        raise RuntimeError(f"pgbench failed: {stderr.decode(errors='replace')[-500:]}")
    tps = float(text.split("tps = ", 1)[1].split()[0])
    latency = float(text.split("latency average = ", 1)[1].split()[0])
    return {"concurrency": concurrency, "pairs_per_s": round(tps, 1), "pair_avg_ms": latency}


async def durability(store_kinds: list[str], dsn: str, redis_url: str) -> dict[str, Any]:
    """How durable each side's write is, as its server says."""
    import psycopg
    import redis.asyncio as aioredis

    from corral.store import open_store

    out: dict[str, Any] = {}
    if "sqlite" in store_kinds:
        tmp = Path(tempfile.mkdtemp(prefix="corral-bench-durability-"))
        try:
            store = await open_store(f"sqlite:///{tmp / 'state.db'}")
            try:
                conn = getattr(store, "_conn")  # noqa: B009  # the store's own connection

                def pragmas() -> tuple[Any, Any]:
                    sync = dict(conn.execute("PRAGMA synchronous").fetchone())["synchronous"]
                    journal = dict(conn.execute("PRAGMA journal_mode").fetchone())
                    return sync, journal["journal_mode"]

                sync, journal = await getattr(store, "call")(pragmas)  # noqa: B009
            finally:
                await store.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        out["sqlite"] = {"synchronous": names.get(sync, sync), "journal_mode": journal}
    if "postgresql" in store_kinds:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            pg: dict[str, Any] = {}
            for setting in ("synchronous_commit", "fsync", "wal_sync_method"):
                row = await (await conn.execute(f"SHOW {setting}")).fetchone()
                pg[setting] = row[0] if row else None
        out["postgresql"] = pg
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        out["redis"] = {
            "appendonly": (await client.config_get("appendonly")).get("appendonly"),
            "save": (await client.config_get("save")).get("save"),
        }
    finally:
        await client.aclose()
    return out


def _db_procs(store: str) -> tuple[str, ...]:
    return ("postgres",) if store == "postgresql" else ()


async def measure_throughput(
    gw: Gateway, store: str, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    config = {
        "url": gw.url,
        "secrets": gw.secrets[:concurrency],
        "warmup": warmup,
        "duration": duration,
    }
    res, cpu = await load("throughput", config, _db_procs(store), warmup + duration + 60)
    res["gateway_cpu_percent"] = cpu.own
    # CPU the gateway process (event loop + store threads) spent per acquire + release
    res["gateway_cpu_ms_per_pair"] = (
        round(10 * cpu.own / res["pairs_per_s"], 3) if res["pairs"] else math.nan
    )
    if cpu.peers:
        res["postgres_cpu_percent"] = cpu.peer
    return res


async def measure_redis(
    url: str, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    config = {"redis_url": url, "concurrency": concurrency, "warmup": warmup, "duration": duration}
    res, cpu = await load("redis", config, ("redis-server",), warmup + duration + 60)
    res["redis_server_cpu_percent"] = cpu.peer
    return res


async def measure_contention(
    gw: Gateway, store: str, keys: int, warmup: float, duration: float
) -> dict[str, Any]:
    config = {
        "url": gw.url,
        "secrets": gw.secrets,
        "keys": keys,
        "warmup": warmup,
        "duration": duration,
    }
    res, cpu = await load("contention", config, _db_procs(store), warmup + duration + 60)
    res["gateway_cpu_percent"] = cpu.own
    if cpu.peers:
        res["postgres_cpu_percent"] = cpu.peer
    return res


async def measure_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    """One repetition on one store: a fresh gateway, the three measurements."""
    out: dict[str, Any] = {"store": store}
    async with gateway(store, args.dsn, max(args.contention_runs, args.concurrency)) as gw:
        out["command"] = await measure_command(gw, args.iterations, args.latency_warmup)
        out["throughput"] = await measure_throughput(
            gw, store, args.concurrency, args.warmup, args.duration
        )
        out["contention"] = await measure_contention(
            gw, store, args.keys, args.warmup, args.contention_duration
        )
    if store == "postgresql":
        out["ceiling"] = await measure_pg_ceiling(args.dsn, args.concurrency, args.duration)
    return out


async def measure_peer(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "throughput": await measure_redis(args.redis, args.concurrency, args.warmup, args.duration),
        "redis_benchmark": await measure_redis_benchmark(
            args.redis, args.concurrency, args.redis_requests
        ),
    }


# --------------------------------------------------------------------------- load generators
# These run in their own process (``--loadgen``): stdin is the config, stdout carries the
# phase lines "measure" and "done" as they happen, then "result <json>".


@dataclass
class Phase:
    measuring: bool = False
    stop: bool = False
    t0: float = 0.0
    t1: float = 0.0
    cpu0: float = 0.0
    cpu1: float = 0.0

    async def clock(self, warmup: float, duration: float) -> None:
        await asyncio.sleep(warmup)
        self.t0, self.cpu0, self.measuring = time.perf_counter(), time.process_time(), True
        print("measure", flush=True)
        await asyncio.sleep(duration)
        self.t1, self.cpu1, self.measuring = time.perf_counter(), time.process_time(), False
        self.stop = True
        print("done", flush=True)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def client_cpu_percent(self) -> float:
        return round(100 * (self.cpu1 - self.cpu0) / self.seconds, 1)


@dataclass
class Tally:
    pairs: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


def _session(url: str, secret: str, limit: int = 1) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _post(session: Any, path: str, body: bytes) -> tuple[int, bytes]:
    async with session.post(path, data=body) as resp:
        return resp.status, await resp.read()


async def _throughput_worker(i: int, url: str, secret: str, phase: Phase, tally: Tally) -> None:
    bodies = [json.dumps({"key": f"bench://tp/{i}/{j}"}).encode() for j in range(16)]
    async with _session(url, secret) as session:
        n = 0
        while not phase.stop:
            body = bodies[n % len(bodies)]
            n += 1
            t0 = time.perf_counter()
            try:
                for path in ("/agent/locks/acquire", "/agent/locks/release"):
                    status, data = await _post(session, path, body)
                    if status != 200 or b'"ok":true' not in data:
                        tally.error(f"{path} {status} {data[:200]!r}")
            except Exception as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
                continue
            if phase.measuring:
                tally.pairs += 1
                tally.latencies.append(time.perf_counter() - t0)


def _rate_figures(phase: Phase, tally: Tally) -> dict[str, Any]:
    lat = summarize_ms(tally.latencies)
    return {
        "pairs_per_s": round(tally.pairs / phase.seconds, 1),
        "pairs": tally.pairs,
        "seconds": round(phase.seconds, 3),
        "pair_p50_ms": lat["p50_ms"],
        "pair_p99_ms": lat["p99_ms"],
        "client_cpu_percent": phase.client_cpu_percent,
        "errors": tally.errors,
        "error_samples": tally.samples,
    }


async def loadgen_throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    phase, tally = Phase(), Tally()
    workers = [
        asyncio.create_task(_throughput_worker(i, cfg["url"], s, phase, tally))
        for i, s in enumerate(cfg["secrets"])
    ]
    await phase.clock(cfg["warmup"], cfg["duration"])
    await asyncio.gather(*workers)
    return {"concurrency": len(workers), **_rate_figures(phase, tally)}


async def _redis_worker(i: int, client: Any, release: Any, phase: Phase, tally: Tally) -> None:
    keys = [f"bench:locks:{os.getpid()}:{i}:{j}" for j in range(16)]
    n = 0
    while not phase.stop:
        key, value = keys[n % len(keys)], f"{i}:{n}"
        n += 1
        t0 = time.perf_counter()
        try:
            if not await client.set(key, value, nx=True, px=30000):
                tally.error(f"SET NX {key} refused")
            if await release(keys=[key], args=[value]) != 1:
                tally.error(f"release {key} deleted nothing")
        except Exception as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)
            continue
        if phase.measuring:
            tally.pairs += 1
            tally.latencies.append(time.perf_counter() - t0)


async def loadgen_redis(cfg: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        cfg["redis_url"], max_connections=cfg["concurrency"]
    )
    client = aioredis.Redis(connection_pool=pool)
    release = client.register_script(REDIS_RELEASE)
    phase, tally = Phase(), Tally()
    try:
        workers = [
            asyncio.create_task(_redis_worker(i, client, release, phase, tally))
            for i in range(cfg["concurrency"])
        ]
        await phase.clock(cfg["warmup"], cfg["duration"])
        await asyncio.gather(*workers)
    finally:
        await client.aclose()
        await pool.disconnect()
    return {"concurrency": cfg["concurrency"], **_rate_figures(phase, tally)}


@dataclass
class Contention:
    """What the contention workers share: who holds which key, the last token per key."""

    holders: dict[str, int] = field(default_factory=dict)
    last_token: dict[str, int] = field(default_factory=dict)
    grants: int = 0  # in the measured window
    refusals: int = 0
    checked_grants: int = 0  # all, warm-up included: every one is checked
    double_grants: int = 0
    token_order_violations: int = 0
    refreshed_grants: int = 0
    latencies: list[float] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    def granted(self, worker: int, key: str, data: bytes, measuring: bool) -> None:
        doc = json.loads(data)
        holder = self.holders.get(key)
        if holder is not None and holder != worker:
            self.double_grants += 1
            self.tally.error(f"double grant of {key}: worker {worker} while {holder} holds it")
        self.holders[key] = worker
        token = int(doc["token"])
        last = self.last_token.get(key)
        if last is not None and token <= last:
            self.token_order_violations += 1
            self.tally.error(f"token of {key} went from {last} to {token}")
        self.last_token[key] = token
        self.refreshed_grants += bool(doc.get("refreshed"))
        self.checked_grants += 1
        self.grants += measuring


async def _contention_worker(
    i: int, url: str, secret: str, keys: int, phase: Phase, st: Contention
) -> None:
    rnd = random.Random(i)
    async with _session(url, secret) as session:
        while not phase.stop:
            key = f"bench://contended/{rnd.randrange(keys)}"
            body = json.dumps({"key": key}).encode()
            t0 = time.perf_counter()
            try:
                status, data = await _post(session, "/agent/locks/acquire", body)
            except Exception as exc:
                st.tally.error(f"acquire: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
                continue
            if phase.measuring:
                st.latencies.append(time.perf_counter() - t0)
            if status == 409 and b'"holder"' in data:
                st.refusals += phase.measuring
                continue
            if status != 200:
                st.tally.error(f"acquire {status} {data[:200]!r}")
                continue
            st.granted(i, key, data, phase.measuring)
            await asyncio.sleep(rnd.uniform(0.001, 0.005))
            # From here on the release is on its way: a grant to another run is legitimate.
            if st.holders.get(key) == i:
                del st.holders[key]
            try:
                status, data = await _post(session, "/agent/locks/release", body)
            except Exception as exc:
                st.tally.error(f"release: {type(exc).__name__}: {exc}")
                continue
            if status != 200 or b'"ok":true' not in data:
                st.tally.error(f"release {status} {data[:200]!r}")


async def loadgen_contention(cfg: dict[str, Any]) -> dict[str, Any]:
    phase, st = Phase(), Contention()
    workers = [
        asyncio.create_task(_contention_worker(i, cfg["url"], s, cfg["keys"], phase, st))
        for i, s in enumerate(cfg["secrets"])
    ]
    await phase.clock(cfg["warmup"], cfg["duration"])
    await asyncio.gather(*workers)
    lat = summarize_ms(st.latencies)
    return {
        "workers": len(workers),
        "keys": cfg["keys"],
        "seconds": round(phase.seconds, 3),
        "grants": st.grants,
        "refusals": st.refusals,
        "grants_per_s": round(st.grants / phase.seconds, 1),
        "acquires_per_s": round((st.grants + st.refusals) / phase.seconds, 1),
        "checked_grants": st.checked_grants,
        "double_grants": st.double_grants,
        "token_order_violations": st.token_order_violations,
        "refreshed_grants": st.refreshed_grants,
        "acquire_p50_ms": lat["p50_ms"],
        "acquire_p99_ms": lat["p99_ms"],
        "client_cpu_percent": phase.client_cpu_percent,
        "errors": st.tally.errors,
        "error_samples": st.tally.samples,
    }


LOADGENS = {
    "throughput": loadgen_throughput,
    "redis": loadgen_redis,
    "contention": loadgen_contention,
}


def loadgen_main(mode: str) -> int:
    cfg = json.loads(sys.stdin.read())
    result = asyncio.run(LOADGENS[mode](cfg))
    print("result " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- the script


async def ensure_redis(url: str) -> str | None:
    """Ping Redis; start a throwaway local server if nothing answers. A note, or None."""
    import redis.asyncio as aioredis

    async def ping() -> bool:
        client = aioredis.Redis.from_url(url)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    if await ping():
        return None
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        *("--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379"),
        *("--save", "", "--appendonly", "no"),
    )
    await proc.wait()
    for _ in range(50):
        if await ping():
            return "started redis-server on 127.0.0.1:6379 (it was not running)"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"Redis at {url} does not answer and could not be started")


def _brief(f: dict[str, Any]) -> str:
    parts = []
    if "command" in f:
        p = f["command"]["pair"]
        parts.append(f"rlock+runlock p50 {p['p50_ms']} p99 {p['p99_ms']} ms")
    if "throughput" in f:
        t = f["throughput"]
        cpu = t.get("gateway_cpu_percent", t.get("redis_server_cpu_percent"))
        parts.append(
            f"{t['pairs_per_s']} pairs/s (server {cpu}% CPU, client"
            f" {t['client_cpu_percent']}%, errors {t['errors']})"
        )
    if "contention" in f:
        c = f["contention"]
        parts.append(
            f"contention {c['grants']} grants {c['refusals']} refusals, double"
            f" {c['double_grants']}, token order {c['token_order_violations']}, errors"
            f" {c['errors']}"
        )
    others = [f[k]["others_cpu_percent"] for k in ("throughput", "contention") if k in f]
    parts.append(f"others used {' / '.join(map(str, others))}% of a core")
    return "; ".join(parts)


def _busy_notes(what: str, f: dict[str, Any]) -> list[str]:
    """Windows during which other processes used more than half a core."""
    return [
        f"{what} {part}: other processes used {f[part]['others_cpu_percent']}% of a core"
        for part in ("throughput", "contention")
        if f.get(part, {}).get("others_cpu_percent", 0) > BUSY_OTHERS
    ]


def _failures(label: str, f: dict[str, Any]) -> list[str]:
    out = []
    for part in ("throughput", "contention"):
        d = f.get(part, {})
        for k in ("errors", "double_grants", "token_order_violations", "refreshed_grants"):
            if d.get(k):
                out.append(f"{label} {part}: {k} = {d[k]} {d.get('error_samples', [])}")
    return out


# (column header, figure key) of the throughput and contention tables
THROUGHPUT_COLUMNS = [
    ("pairs/s", "pairs_per_s"),
    ("p50 ms", "pair_p50_ms"),
    ("p99 ms", "pair_p99_ms"),
    ("gateway CPU", "gateway_cpu_percent"),
    ("CPU ms/pair", "gateway_cpu_ms_per_pair"),
    ("server CPU", "postgres_cpu_percent"),
    ("client CPU", "client_cpu_percent"),
    ("others CPU", "others_cpu_percent"),
    ("errors", "errors"),
]
CONTENTION_COLUMNS = [
    ("grants", "grants"),
    ("refusals", "refusals"),
    ("grants/s", "grants_per_s"),
    ("double", "double_grants"),
    ("token order", "token_order_violations"),
    ("p50 ms", "acquire_p50_ms"),
    ("p99 ms", "acquire_p99_ms"),
    ("gateway CPU", "gateway_cpu_percent"),
    ("client CPU", "client_cpu_percent"),
    ("others CPU", "others_cpu_percent"),
    ("errors", "errors"),
]


def _row(label: str, figures: dict[str, Any], columns: list[tuple[str, str]]) -> list[Any]:
    return [label, *(figures.get(key, math.nan) for _, key in columns)]


def _report(result: Result, stores: list[str], reps: int) -> None:
    fig, params = result.figures, result.params
    rows: list[list[Any]] = []
    for s in stores:
        c = fig[s]["command"]
        rows.append(
            [f"{s}: rlock+runlock", *(c["pair"][k] for k in ("p50_ms", "p90_ms", "p99_ms"))]
        )
        rows.append([f"{s}: rlock, runlock, floor (p50)", c["rlock_p50_ms"], c["runlock_p50_ms"],
                     c["floor_pair_p50_ms"]])  # fmt: skip
    print_table(
        f"command latency in ms (bash loop, process starts included), median of {reps}"
        " (floor: two bare `python -SI -c pass`)",
        ["figure", "p50", "p90", "p99"],
        rows,
    )
    redis = dict(fig["redis"]["throughput"])
    redis["postgres_cpu_percent"] = redis.get("redis_server_cpu_percent", math.nan)
    print_table(
        f"throughput, {params['concurrency']} workers, own keys, median of {reps}"
        " (CPU in % of one core; server = PostgreSQL or redis-server)",
        ["store", *(h for h, _ in THROUGHPUT_COLUMNS)],
        [_row(s, fig[s]["throughput"], THROUGHPUT_COLUMNS) for s in stores]
        + [_row("redis", redis, THROUGHPUT_COLUMNS)],
    )
    print_table(
        f"contention, {params['contention_runs']} runs on {params['keys']} keys,"
        f" {params['contention_duration']} s, median of {reps} (acquire latency; safety counts"
        " summed over repetitions)",
        ["store", *(h for h, _ in CONTENTION_COLUMNS)],
        [_row(s, fig[s]["contention"], CONTENTION_COLUMNS) for s in stores],
    )
    if "postgresql" in stores and "pairs_per_s" in fig["postgresql"].get("ceiling", {}):
        ceiling = fig["postgresql"]["ceiling"]["pairs_per_s"]
        gw_rate = fig["postgresql"]["throughput"]["pairs_per_s"]
        print(
            f"\nPostgreSQL's own ceiling (pgbench calling corral_rlock + corral_runlock,"
            f" {params['concurrency']} connections, no corral process): {ceiling} pairs/s;"
            f" the gateway reaches {gw_rate} = {gw_rate / ceiling:.0%} of it"
        )
    redis_rate = redis["pairs_per_s"]
    comp = [
        (f"{s} pairs/s (higher is better)", fig[s]["throughput"]["pairs_per_s"], redis_rate)
        for s in stores
    ]
    print_comparison(f"throughput, corral vs Redis, median of {reps}", comp, theirs="redis")
    result.figures["ratios_corral_over_redis"] = {
        f"{s}_throughput": round(a / b, 3) if b else None
        for s, (_, a, b) in zip(stores, comp, strict=True)
    }
    rb = fig["redis"]["redis_benchmark"]
    print_table(
        f"Redis from redis-benchmark (C client, {rb['concurrency']} connections, no pipelining),"
        f" median of {reps}",
        ["command", "requests/s", "p50 ms"],
        [
            ["SET (-t set)", rb["set_per_s"], rb["set_p50_ms"]],
            ["SET key v NX PX 30000 (fresh keys)", rb["set_nx_px_per_s"], rb["set_nx_px_p50_ms"]],
            ["EVAL compare-and-delete", rb["compare_and_delete_per_s"],
             rb["compare_and_delete_p50_ms"]],
            ["pair (1 / (1/SET NX + 1/EVAL))", rb["pairs_per_s"], math.nan],
            ["pair from redis.asyncio (above)", redis_rate, redis["pair_p50_ms"]],
        ],
    )  # fmt: skip
    comp_c = [
        (f"{s} pairs/s vs redis-benchmark pairs", fig[s]["throughput"]["pairs_per_s"],
         rb["pairs_per_s"])
        for s in stores
    ]  # fmt: skip
    print_comparison(f"throughput, corral vs Redis's C client, median of {reps}", comp_c,
                     theirs="redis-benchmark")  # fmt: skip
    result.figures["ratios_corral_over_redis"].update(
        {
            f"{s}_throughput_vs_redis_benchmark": round(a / b, 4) if b else None
            for s, (_, a, b) in zip(stores, comp_c, strict=True)
        }
    )
    dur = params["durability"]
    print("\ndurability (read from each side):")
    for side, settings in dur.items():
        print(f"  {side}: " + ", ".join(f"{k}={v!r}" for k, v in settings.items()))
    print(
        "  (what they mean: Redis with appendonly 'no' and save '' keeps nothing on disk;"
        " SQLite synchronous NORMAL in WAL loses no commit to a process crash, but may lose"
        " the last ones to a power cut; PostgreSQL synchronous_commit on with fsync on"
        " loses none to either)"
    )


async def _main(args: argparse.Namespace) -> int:
    stores = args.stores
    result = Result(
        name="locks",
        params={
            k: getattr(args, k)
            for k in (
                "stores",
                "reps",
                "iterations",
                "concurrency",
                "warmup",
                "duration",
                "contention_runs",
                "keys",
                "contention_duration",
                "quick",
                "redis_requests",
            )
        },
    )
    note = await ensure_redis(args.redis)
    if note:
        print(note)
        result.notes.append(note)
    result.params["durability"] = await durability(stores, args.dsn, args.redis)
    units: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        (s, functools.partial(measure_store, s, args)) for s in stores
    ]
    units.append(("redis", functools.partial(measure_peer, args)))
    kept: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in units}
    # Interleaved: repetition 1 of everything, then 2, ... so drift hits all sides alike.
    for rep in range(1, args.reps + 1):
        busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
        if busy >= args.quiet_threshold:
            print(f"machine busy: {busy}% CPU used elsewhere; measuring anyway", flush=True)
            result.notes.append(f"repetition {rep} started with {busy}% CPU used elsewhere")
        for label, fn in units:
            print(f"{label}: repetition {rep} ...", flush=True)
            figures = await fn()
            print(f"  {_brief(figures)}", flush=True)
            result.notes += _busy_notes(f"{label} repetition {rep}", figures)
            result.runs.append({"what": label, "rep": rep, **figures})
            kept[label].append(figures)
    for label, runs in kept.items():
        result.figures[label] = median_of_runs(runs)
        # Safety counts are summed, not medianed: one violation in any repetition counts.
        for part in ("throughput", "contention"):
            for k in ("errors", "double_grants", "token_order_violations", "refreshed_grants"):
                if k in result.figures[label].get(part, {}):
                    result.figures[label][part][k] = sum(r[part][k] for r in runs)
    _report(result, stores, args.reps)
    failures = [x for label, runs in kept.items() for r in runs for x in _failures(label, r)]
    result.notes += failures
    path = result.write()
    print(f"\nwrote {path}")
    for line in failures:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if failures else 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, pg")
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--redis", default=DEFAULT_REDIS, help="the peer's Redis URL")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--iterations", type=int, default=200, help="rlock+runlock pairs timed")
    p.add_argument("--concurrency", type=int, default=32, help="throughput workers")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    p.add_argument("--duration", type=float, default=5.0, help="throughput window, seconds")
    p.add_argument("--contention-runs", type=int, default=200, help="contending runs")
    p.add_argument("--keys", type=int, default=1000, help="contended keys")
    p.add_argument("--contention-duration", type=float, default=10.0, help="seconds")
    p.add_argument(
        "--redis-requests", type=int, default=200000, help="requests per redis-benchmark run"
    )
    p.add_argument("--quick", action="store_true", help="one repetition, short phases")
    p.add_argument("--quiet-threshold", type=float, default=15.0)
    p.add_argument("--quiet-timeout", type=float, default=30.0)
    p.add_argument("--loadgen", choices=sorted(LOADGENS), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    try:
        ns.stores = [STORE_ALIASES[s.strip()] for s in ns.stores.split(",") if s.strip()]
    except KeyError as exc:
        p.error(f"--stores: unknown store {exc.args[0]!r}")
    ns.latency_warmup = 10
    if ns.quick:
        ns.reps = 1
        ns.iterations = min(ns.iterations, 50)
        ns.latency_warmup = 5
        ns.warmup = min(ns.warmup, 0.5)
        ns.duration = min(ns.duration, 2.0)
        ns.contention_duration = min(ns.contention_duration, 3.0)
        ns.redis_requests = min(ns.redis_requests, 50000)
        ns.quiet_timeout = min(ns.quiet_timeout, 5.0)
    return ns


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    parsed = _parse()
    if parsed.loadgen:
        sys.exit(loadgen_main(parsed.loadgen))
    sys.exit(asyncio.run(_main(parsed)))
