"""Scheduler benchmark: corral's dispatcher against procrastinate, in the same run.

corral is driven as a user runs it: a temporary project whose one agent's
``[harness] command`` is ``["/bin/true"]`` (a list: no shell) on the host runtime,
and real ``corral start --headless --port 0`` processes. Figures (see
docs/benchmarks.md):

* latency: ``POST /control/runs`` at a fixed offered rate (open loop, 50/s for
  10 s); per item, ``run.started_at - item.enqueued_at`` as the store recorded
  them (both stamped by the scheduler process's clock: the item when the intake
  transaction inserts it, the run right after the process was spawned and its
  prompt written, before ``mark_run_running``'s transaction).
* throughput: N items enqueued straight into the store while the project is
  paused, then resumed; N / (last run's ``ended_at`` - first run's
  ``created_at``), each run spawning ``/bin/true`` and being recorded.
  At agent scale 16 (the peer's concurrency) and 64; with one and with two
  scheduler processes on one PostgreSQL database.
* RSS: VmRSS of the scheduler once 500 ``sleep 120`` runs are ``running``
  (agent scale 500), and idle.
* peer: ``peer_procrastinate.measure_procrastinate`` with 1 and 2 workers.

``.venv/bin/python bench/scheduler.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_PG_DSN,
    ForeignCpu,
    Result,
    fresh_database,
    median_of_runs,
    print_comparison,
    print_table,
    summarize_ms,
    wait_for_quiet,
)

from corral.store import ItemState, NewItem, RunState, Store, TriggerKind, open_store

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AGENT = "bench"
TOKEN = "bench-operator-token"
TRUE_ARGV = ["/bin/true"]
SLEEP_ARGV = ["sleep", "120"]
_STARTED = re.compile(r"scheduler (\S+) started; gateway on (http://\S+)")

# --------------------------------------------------------------------------- a corral project


def write_project(root: Path, state_url: str, *, scale: int, command: list[str]) -> None:
    """A project with one agent ``bench`` running ``command`` (argv) at ``scale``."""
    (root / "agents" / AGENT).mkdir(parents=True)
    (root / "config.toml").write_text(f'[state]\nurl = "{state_url}"\n')
    (root / "agents" / AGENT / "SKILL.md").write_text(f"---\nname: {AGENT}\n---\nbench\n")
    argv = ", ".join(f'"{a}"' for a in command)
    (root / "agents" / AGENT / "config.toml").write_text(
        f"scale = {scale}\ntimeout = 600\nmaxWorkQueueSize = 100000\n"
        f"[harness]\ncommand = [{argv}]\n"
    )


@dataclass
class SchedulerProc:
    proc: asyncio.subprocess.Process
    url: str
    id: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(home)
    env["CORRAL_OPERATOR_TOKEN"] = TOKEN
    env.pop("VIRTUAL_ENV", None)
    return env


async def start_scheduler(root: Path, home: Path, index: int) -> SchedulerProc:
    """``corral start --headless --port 0``; its stderr (log lines) goes to a file."""
    log = root.parent / f"scheduler-{index}.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "corral",
            "start",
            "--headless",
            "--port",
            "0",
            "--grace",
            "0",
            cwd=root,
            env=_clean_env(home),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = _STARTED.search(log.read_text(errors="replace"))
        if m:
            return SchedulerProc(proc, m.group(2), m.group(1), log)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
    raise RuntimeError(f"corral start did not come up:\n{log.read_text(errors='replace')[-2000:]}")


async def stop_scheduler(s: SchedulerProc) -> None:
    """SIGTERM (drain), a second SIGTERM (stop runs now), SIGKILL as a last resort."""
    for sig_wait in (5.0, 25.0):
        if s.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.proc.wait(), sig_wait)
    if s.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            s.proc.kill()
        await s.proc.wait()


def vm_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids``: the system share is the kernel's work
    for them (fork, mkdir, file and pipe syscalls), which a Python profiler sees only
    as the frame that made the call."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


@dataclass
class Fleet:
    """A temporary project, its store and N running schedulers."""

    root: Path
    state_url: str
    store: Store
    schedulers: list[SchedulerProc] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.schedulers]


@contextlib.asynccontextmanager
async def state_url_for(backend: str, tmp: Path, dsn: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'state.db'}"
    else:
        async with fresh_database(dsn, prefix="bench_corral") as url:
            yield url


@contextlib.asynccontextmanager
async def fleet(
    backend: str, dsn: str, *, schedulers: int, scale: int, command: list[str]
) -> AsyncIterator[Fleet]:
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    try:
        async with state_url_for(backend, tmp, dsn) as url:
            root, home = tmp / "project", tmp / "home"
            home.mkdir()
            write_project(root, url, scale=scale, command=command)
            procs: list[SchedulerProc] = []
            try:
                for i in range(schedulers):
                    procs.append(await start_scheduler(root, home, i))
                store = await open_store(url)
                try:
                    yield Fleet(root, url, store, procs)
                finally:
                    await store.close()
            finally:
                await asyncio.gather(*(stop_scheduler(p) for p in procs))
                for p in procs:
                    if p.proc.returncode not in (0, None):
                        print(f"  warning: scheduler {p.id} exited with {p.proc.returncode}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- waiting on the store


async def wait_settled(store: Store, timeout: float, every: float = 0.2) -> None:
    """Until no item is queued or claimed (polling the store, every ``every`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        open_items = await store.list_items(states=[ItemState.QUEUED, ItemState.CLAIMED], limit=1)
        if not open_items:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("items still queued or claimed")
        await asyncio.sleep(every)


async def items_and_runs(store: Store, item_ids: list[int]) -> list[tuple[Any, Any]]:
    """(item, run) for each id; items must be done."""
    wanted = set(item_ids)
    items = {i.id: i for i in await store.list_items(limit=len(wanted) + 1000) if i.id in wanted}
    runs = {r.id: r for r in await store.list_runs(limit=len(wanted) + 1000)}
    out = []
    for iid in item_ids:
        item = items.get(iid)
        if item is None or item.run_id is None:
            raise RuntimeError(f"item {iid} has no run ({item and item.state})")
        run = runs.get(item.run_id) or await store.get_run(item.run_id)
        out.append((item, run))
    return out


# --------------------------------------------------------------------------- measurements


async def post_run(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.post(f"{url}/control/runs", json={"agent": AGENT})
    r.raise_for_status()
    return r.json()["item"]


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30.0,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def warm_up(f: Fleet, n: int) -> None:
    """``n`` items POSTed at once, all done: imports, first forks, pools, HTTP connections."""
    async with _client() as client:
        await asyncio.gather(*(post_run(client, f.schedulers[0].url) for _ in range(n)))
    await wait_settled(f.store, 120.0, every=0.05)
    await asyncio.sleep(0.5)


async def measure_latency(f: Fleet, rate: float, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration))
    ids: list[int] = []
    post_s: list[float] = []
    returned: dict[int, float] = {}
    url = f.schedulers[0].url
    async with _client() as client:
        # open the keep-alive connections before the clock starts
        await asyncio.gather(*(client.get(f"{url}/health") for _ in range(8)))
        start = loop.time() + 0.05

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            t0 = time.time()
            item = await post_run(client, url)
            t1 = time.time()
            post_s.append(t1 - t0)
            ids.append(item["id"])
            returned[item["id"]] = t1

        await asyncio.gather(*(one(i) for i in range(n)))
    await wait_settled(f.store, 60.0)
    pairs = await items_and_runs(f.store, ids)
    lat = [(r.started_at - i.enqueued_at).total_seconds() for i, r in pairs]
    # The split, by the store's own stamps: intake commit + wake-up + claim transaction
    # (enqueued_at -> the claim's `now`), then claim commit + prompt, run files, spawn.
    to_claim = [(i.claimed_at - i.enqueued_at).total_seconds() for i, r in pairs]
    claim_to_start = [(r.started_at - i.claimed_at).total_seconds() for i, r in pairs]
    # For reference, the peer's definition: from the client seeing the commit (the POST's
    # response) to the spawn; negative when the run started before the response arrived.
    client_side = [r.started_at.timestamp() - returned[i.id] for i, r in pairs]
    enq = sorted(i.enqueued_at.timestamp() for i, _ in pairs)
    bad = [r.state for _, r in pairs if r.state is not RunState.SUCCEEDED]
    return {
        "offered_rate": rate,
        "achieved_rate": round((n - 1) / (enq[-1] - enq[0]), 2) if n > 1 else rate,
        **summarize_ms(lat),
        "to_claim_p50_ms": summarize_ms(to_claim)["p50_ms"],
        "to_claim_p99_ms": summarize_ms(to_claim)["p99_ms"],
        "claim_to_start_p50_ms": summarize_ms(claim_to_start)["p50_ms"],
        "claim_to_start_p99_ms": summarize_ms(claim_to_start)["p99_ms"],
        "post_p50_ms": summarize_ms(post_s)["p50_ms"],
        "post_p99_ms": summarize_ms(post_s)["p99_ms"],
        "from_response_p50_ms": summarize_ms(client_side)["p50_ms"],
        "from_response_p99_ms": summarize_ms(client_side)["p99_ms"],
        "not_succeeded": len(bad),
    }


async def measure_throughput(f: Fleet, items: int, scale: int) -> dict[str, Any]:
    store = f.store
    await store.set_agent_scale(AGENT, scale)
    await store.set_paused(None, True)
    ids = []
    t0 = time.monotonic()
    for _ in range(items):
        res = await store.enqueue(NewItem(agent=AGENT, trigger=TriggerKind.MANUAL))
        if res.item.state is not ItemState.QUEUED:
            raise RuntimeError(f"enqueue: {res.item.state} {res.item.reason}")
        ids.append(res.item.id)
    enqueue_s = time.monotonic() - t0
    await asyncio.sleep(0.3)
    spies = await start_py_spy(f, f"throughput-scale{scale}") if PROFILE_DIR else []
    user0, sys0 = cpu_split(f.pids)
    await store.set_paused(None, False)
    await wait_settled(store, 600.0)
    user1, sys1 = cpu_split(f.pids)
    cpu0, cpu1 = user0 + sys0, user1 + sys1
    await stop_py_spy(spies)
    pairs = await items_and_runs(store, ids)
    first = min(r.created_at for _, r in pairs)
    last = max(r.ended_at for _, r in pairs)
    elapsed = (last - first).total_seconds()
    bad = [r.state for _, r in pairs if r.state is not RunState.SUCCEEDED]
    by_owner: dict[str, int] = {}
    for _, r in pairs:
        by_owner[r.owner or "?"] = by_owner.get(r.owner or "?", 0) + 1
    return {
        "items": items,
        "scale": scale,
        "runs_per_s": round(items / elapsed, 1),
        "seconds": round(elapsed, 3),
        "enqueue_per_s": round(items / enqueue_s, 1),
        "scheduler_cpu_ms_per_run": round((cpu1 - cpu0) * 1000 / items, 3),
        "scheduler_sys_ms_per_run": round((sys1 - sys0) * 1000 / items, 3),
        "runs_per_scheduler": [by_owner.get(s.id, 0) for s in f.schedulers],
        "not_succeeded": len(bad),
    }


async def measure_rss(backend: str, dsn: str, concurrent: int) -> dict[str, Any]:
    async with fleet(backend, dsn, schedulers=1, scale=concurrent, command=SLEEP_ARGV) as f:
        pid = f.pids[0]
        await asyncio.sleep(2.0)
        idle = vm_kib(pid)
        t0 = time.monotonic()
        for _ in range(concurrent):
            await f.store.enqueue(NewItem(agent=AGENT, trigger=TriggerKind.MANUAL))
        deadline = time.monotonic() + 120
        running = 0
        while time.monotonic() < deadline:
            running = len(await f.store.list_runs(states=[RunState.RUNNING], limit=concurrent + 1))
            if running >= concurrent:
                break
            await asyncio.sleep(0.1)
        ramp = time.monotonic() - t0
        await asyncio.sleep(1.0)  # let in-flight bookkeeping settle
        loaded = vm_kib(pid)
        hwm = vm_kib(pid, "VmHWM")
        threads = vm_kib(pid, "Threads")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        run_pids = [r.pid for r in await f.store.list_runs(limit=concurrent + 10) if r.pid]
        out = {
            "backend": backend,
            "concurrent": concurrent,
            "running_seen": running,
            "rss_idle_mib": round(idle / 1024, 1),
            "rss_loaded_mib": round(loaded / 1024, 1),
            "rss_peak_mib": round(hwm / 1024, 1),
            "threads": threads,
            "open_fds": fds,
            "seconds_to_all_running": round(ramp, 2),
        }
    _reap(run_pids)
    return out


def _reap(pids: list[int]) -> None:
    """Kill ``sleep 120`` children the stopped scheduler left (should be none)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().split(b"\0")[:2] != [b"sleep", b"120"]:
                    continue
            os.kill(pid, signal.SIGKILL)
            print(f"  warning: run process {pid} outlived its scheduler; killed")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass


async def measure_corral(
    backend: str,
    dsn: str,
    *,
    schedulers: int,
    latency: bool,
    scales: list[int],
    rate: float,
    duration: float,
    items: int,
    concurrency: int,
) -> dict[str, Any]:
    """One repetition: a fresh store, ``schedulers`` processes, warm-up, then the phases."""
    foreign = ForeignCpu()
    async with fleet(
        backend, dsn, schedulers=schedulers, scale=concurrency, command=TRUE_ARGV
    ) as f:
        await warm_up(f, 4 * concurrency * schedulers)
        foreign.start()
        out: dict[str, Any] = {"backend": backend, "schedulers": schedulers}
        if latency:
            out["latency"] = await measure_latency(f, rate, duration)
            await asyncio.sleep(0.5)
        for scale in scales:
            out[f"throughput_scale_{scale}"] = await measure_throughput(f, items, scale)
            await asyncio.sleep(0.5)
        out["rss_after_mib"] = [round(vm_kib(p) / 1024, 1) for p in f.pids]
        out["foreign_cpu_percent"] = foreign.stop(own_pids=f.pids)
    return out


# --------------------------------------------------------------------------- profiling

PROFILE_DIR: Path | None = None  # --profile: py-spy the schedulers in throughput phases
PROFILE_RATE = 500  # --profile-rate: samples per second
PROFILE_GIL = False  # --profile-gil: only the thread holding the GIL (Python's own work)
_PY_SPY = Path(PYTHON).with_name("py-spy")


async def start_py_spy(f: Fleet, label: str) -> list[asyncio.subprocess.Process]:
    """``py-spy record --format raw`` (collapsed stacks, idle excluded) on each scheduler."""
    assert PROFILE_DIR is not None
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    backend = "sqlite" if f.state_url.startswith("sqlite") else "pg"
    spies = []
    for i, pid in enumerate(f.pids):
        out = PROFILE_DIR / f"{backend}-{len(f.pids)}sched-{label}-{i}.txt"
        spies.append(
            await asyncio.create_subprocess_exec(
                str(_PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(PROFILE_RATE),
                "--format",
                "raw",
                "--function",
                "--nonblocking",
                *(["--gil"] if PROFILE_GIL else []),
                "--output",
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    await asyncio.sleep(1.0)  # py-spy attaches
    return spies


async def stop_py_spy(spies: list[asyncio.subprocess.Process]) -> None:
    for s in spies:
        with contextlib.suppress(ProcessLookupError):
            s.send_signal(signal.SIGINT)
    for s in spies:
        await s.wait()


# Where a scheduler's on-CPU samples go: the first bucket one of whose markers a frame
# of the stack contains (function names as py-spy prints them). The store's buckets come
# first: a store call made from the executor is the store's, not the executor's.
BUCKETS = [
    ("store: claim (dispatch)", ("claim (corral/store/_queue.py",)),
    ("store: mark running", ("mark_run_running (",)),
    ("store: run secret", ("set_run_secret (",)),
    ("store: finalise", ("finalize (corral/store/_leases.py",)),
    ("store: enqueue", ("enqueue (corral/store/_queue.py",)),
    ("store: other (get_run, leases, recovery)", ("corral/store/",)),
    ("containment at the end (kill_run: cgroup glob, kill, rmdir)", ("kill_run",)),
    (
        "spawn (runtime.launch: fork/exec, pipes, cgroup)",
        ("launch (corral/runtime/", "start_process.<locals>.start (", "_adopt ("),
    ),
    (
        "run dir + files (mkdir, env.sh, prompt files)",
        ("_private_run_dir (", "_scratch (", "RunFiles.write (", "write_private_in ("),
    ),
    ("prompt assembly", ("build_prompt (", "prompt_context (", "build_launch (")),
    ("prepare: other (credentials, env, static view)", ("plan_run (", "_prepare_files (")),
    ("run log (open, redact, write, close)", ("RunLog", "Redact")),
    ("pipe pumping / exit wait", ("pump (corral/runtime/", "_pump (", "_watch (")),
    ("logging (scheduler log lines)", ("callHandlers (",)),
    ("hooks / context injection", ("run_hooks (", "inject_context (")),
    ("watchdog", ("corral/scheduler/watchdog.py",)),
    ("telemetry / metrics", ("corral/telemetry/", "corral/gateway/metrics.py", "prometheus")),
    ("executor: other", ("corral/scheduler/executor.py",)),
    ("scheduler service: other", ("corral/scheduler/service.py",)),
    ("HTTP gateway", ("uvicorn", "starlette")),
]

#: Innermost frames of a thread that waits: py-spy may count them as active.
_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "select (selectors.py")


def summarize_profile(path: Path) -> dict[str, float]:
    """Share (%) of a raw py-spy file's busy samples per bucket; threads summed.

    A sample whose innermost frame is a wait (an idle pool thread, the event loop in
    epoll_wait) is left out: py-spy cannot always tell a waiting thread from a busy one.
    """
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if any(leaf in frames[-1] for leaf in _IDLE_LEAVES):
            continue
        total += int(n)
        bucket = "other (event loop, asyncio, interpreter)"
        for name, markers in BUCKETS:
            if any(marker in fr for fr in frames for marker in markers):
                bucket = name
                break
        counts[bucket] = counts.get(bucket, 0) + int(n)
    if not total:
        return {}
    return {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


# --------------------------------------------------------------------------- the script


async def _repeat(
    label: str,
    runs: int,
    args: argparse.Namespace,
    fn: Callable[[], Awaitable[dict[str, Any]]],
    raw: list[dict[str, Any]],
    round_no: int = 1,
) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    disturbed = 0
    while len(kept) < runs:
        busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
        note = f" (machine busy: {busy}% CPU elsewhere)" if busy >= args.quiet_threshold else ""
        attempt = f" (attempt {disturbed + 1})" if disturbed else ""
        print(f"{label}: repetition {round_no}{attempt} ...{note}", flush=True)
        figures = await fn()
        foreign = figures.get("foreign_cpu_percent", math.nan)
        bad = foreign >= args.quiet_threshold and disturbed < args.max_retries
        print(f"  {_brief(figures)}" + (" -> disturbed, repeating" if bad else ""), flush=True)
        raw.append({"what": label, "disturbed": bad, **figures})
        if bad:
            disturbed += 1
        else:
            kept.append(figures)
    return kept


def _brief(f: dict[str, Any]) -> str:
    parts = []
    if "latency" in f:
        lat = f["latency"]
        parts.append(f"latency p50 {lat['p50_ms']} p99 {lat['p99_ms']} max {lat['max_ms']} ms")
    for k, v in f.items():
        if k.startswith("throughput_scale_"):
            parts.append(
                f"scale {v['scale']}: {v['runs_per_s']} runs/s"
                f" ({v['scheduler_cpu_ms_per_run']} ms CPU/run,"
                f" {v.get('scheduler_sys_ms_per_run')} of it system, per scheduler"
                f" {v['runs_per_scheduler']})"
            )
    if "throughput" in f and "jobs_per_s" in f.get("throughput", {}):
        parts.append(f"throughput {f['throughput']['jobs_per_s']} jobs/s")
    if "rss_loaded_mib" in f:
        parts.append(
            f"RSS idle {f['rss_idle_mib']} MiB, {f['running_seen']} running"
            f" {f['rss_loaded_mib']} MiB (all running after {f['seconds_to_all_running']} s)"
        )
    if "foreign_cpu_percent" in f:
        parts.append(f"others used {f['foreign_cpu_percent']}% CPU")
    return "; ".join(parts)


Unit = tuple[str, Callable[[], Awaitable[dict[str, Any]]]]


def _units(
    args: argparse.Namespace, parts: set[str], backends: list[str], scales: list[int]
) -> list[Unit]:
    """(label, one repetition) for every measurement asked for, in running order."""

    def corral(backend: str, schedulers: int, latency: bool, scales: list[int]) -> Unit:
        label = f"corral {backend} {schedulers} scheduler{'s' if schedulers > 1 else ''}"
        return label, lambda: measure_corral(
            backend,
            args.dsn,
            schedulers=schedulers,
            latency=latency,
            scales=scales,
            rate=args.rate,
            duration=args.duration,
            items=args.items,
            concurrency=args.concurrency,
        )

    units: list[Unit] = []
    for backend in backends:
        thr = list(scales) if "throughput" in parts else []
        if backend == "pg" and "two" in parts and args.concurrency not in thr:
            thr.append(args.concurrency)  # the baseline of the two-scheduler figure
        if "latency" in parts or thr:
            units.append(corral(backend, 1, "latency" in parts, thr))
    if "two" in parts and "pg" in backends:
        units.append(corral("pg", 2, False, [args.concurrency]))
    if "peer" in parts:
        from peer_procrastinate import measure_procrastinate

        def peer(w: int) -> Unit:
            return f"procrastinate {w} worker(s)", lambda: measure_procrastinate(
                args.dsn,
                rate=args.rate,
                duration=args.duration,
                throughput_items=args.items,
                workers=w,
                concurrency=args.concurrency,
            )

        units += [peer(1), peer(2)]
    if "rss" in parts:
        for backend in backends:
            units.append(
                (
                    f"corral {backend} RSS, {args.rss_runs} sleeping runs",
                    lambda b=backend: measure_rss(b, args.dsn, args.rss_runs),
                )
            )
    return units


async def _main(args: argparse.Namespace) -> int:
    parts = set(args.only.split(","))
    unknown = parts - {"latency", "throughput", "two", "rss", "peer"}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}")
    backends = args.backends.split(",")
    scales = [int(s) for s in args.scales.split(",")]
    result = Result(
        name="scheduler",
        params={
            "only": sorted(parts),
            "backends": backends,
            "rate": args.rate,
            "duration": args.duration,
            "throughput_items": args.items,
            "scales": scales,
            "concurrency": args.concurrency,
            "rss_runs": args.rss_runs,
            "runs": args.runs,
            "agent_command": TRUE_ARGV,
        },
    )
    units = _units(args, parts, backends, scales)
    # Interleave: repetition 1 of everything, then 2, ... so drift hits all sides alike.
    kept: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in units}
    for round_no in range(1, args.runs + 1):
        for label, fn in units:
            kept[label] += await _repeat(label, 1, args, fn, result.runs, round_no)
    for label, runs in kept.items():
        result.figures[label] = median_of_runs(runs)

    _report(result, args)
    if PROFILE_DIR is not None:
        for raw in sorted(PROFILE_DIR.glob("*.txt")):
            shares = summarize_profile(raw)
            result.figures.setdefault("profile_percent", {})[raw.stem] = shares
            print_table(f"py-spy, {raw.name}: share of samples", ["where", "%"], shares.items())
    path = result.write()
    print(f"\nwrote {path}")
    return 0


def _get(d: dict[str, Any], *keys: str) -> float:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return math.nan
        d = d[k]
    return float(d) if isinstance(d, int | float) else math.nan


def _report(result: Result, args: argparse.Namespace) -> None:
    fig = result.figures
    c = args.concurrency
    rows: list[tuple[Any, ...]] = []
    for label, f in fig.items():
        if not label.startswith("corral"):
            continue
        if "latency" in f:
            lat = f["latency"]
            rows += [
                (
                    f"{label}: latency p50 / p99 / max (ms)",
                    lat["p50_ms"],
                    lat["p99_ms"],
                    lat["max_ms"],
                ),
                (
                    f"{label}: POST round trip p50 / p99 (ms)",
                    lat["post_p50_ms"],
                    lat["post_p99_ms"],
                    "",
                ),
                (
                    f"{label}: enqueued->claimed p50 / p99 (ms)",
                    lat.get("to_claim_p50_ms", math.nan),
                    lat.get("to_claim_p99_ms", math.nan),
                    "",
                ),
                (
                    f"{label}: claimed->started p50 / p99 (ms)",
                    lat.get("claim_to_start_p50_ms", math.nan),
                    lat.get("claim_to_start_p99_ms", math.nan),
                    "",
                ),
            ]
        for k, v in f.items():
            if k.startswith("throughput_scale_"):
                rows.append(
                    (
                        f"{label}: scale {v['scale']} runs/s, CPU ms/run",
                        v["runs_per_s"],
                        v["scheduler_cpu_ms_per_run"],
                        "",
                    )
                )
        if "rss_loaded_mib" in f:
            rows.append(
                (
                    f"{label}: RSS idle / loaded / peak (MiB)",
                    f["rss_idle_mib"],
                    f["rss_loaded_mib"],
                    f["rss_peak_mib"],
                )
            )
    print_table(f"corral, median of {args.runs}", ["figure", "a", "b", "c"], rows)

    peer1 = fig.get("procrastinate 1 worker(s)", {})
    peer2 = fig.get("procrastinate 2 worker(s)", {})
    comp: list[tuple[str, float, float]] = []
    ratios: dict[str, float] = {}
    for backend in args.backends.split(","):
        one = fig.get(f"corral {backend} 1 scheduler", {})
        for p in ("p50_ms", "p99_ms", "max_ms"):
            a, b = _get(one, "latency", p), _get(peer1, "latency", p)
            comp.append((f"{backend} latency {p[:-3]} (ms, lower is better)", a, b))
            ratios[f"{backend}_latency_{p[:-3]}"] = a / b if b else math.nan
        a = _get(one, f"throughput_scale_{c}", "runs_per_s")
        b = _get(peer1, "throughput", "jobs_per_s")
        comp.append((f"{backend} throughput 1 vs 1 worker (/s)", a, b))
        ratios[f"{backend}_throughput_1v1"] = a / b if b else math.nan
    two = fig.get("corral pg 2 schedulers", {})
    if two:
        a = _get(two, f"throughput_scale_{c}", "runs_per_s")
        b = _get(peer2, "throughput", "jobs_per_s")
        comp.append(("pg throughput 2 vs 2 workers (/s)", a, b))
        ratios["pg_throughput_2v2"] = a / b if b else math.nan
    if peer1 or peer2:
        comp.append(("peer 2-worker latency p50 (ms)", math.nan, _get(peer2, "latency", "p50_ms")))
        print_comparison(f"corral vs procrastinate, median of {args.runs}", comp)
        result.figures["ratios_corral_over_peer"] = {
            k: (round(v, 3) if not math.isnan(v) else None) for k, v in ratios.items()
        }


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument(
        "--only",
        default="latency,throughput,two,rss,peer",
        help="comma-separated parts: latency, throughput, two (two schedulers on PG), rss, peer",
    )
    p.add_argument("--backends", default="sqlite,pg", help="comma-separated: sqlite, pg")
    p.add_argument("--rate", type=float, default=50.0, help="offered rate, items/s")
    p.add_argument("--duration", type=float, default=10.0, help="latency phase, seconds")
    p.add_argument("--items", type=int, default=2000, help="throughput phase, items")
    p.add_argument("--scales", default="16,64", help="agent scales for the throughput phase")
    p.add_argument(
        "--concurrency", type=int, default=16, help="agent scale = the peer's concurrency"
    )
    p.add_argument("--rss-runs", type=int, default=500, help="concurrent sleeping runs")
    p.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--quick", action="store_true", help="one repetition, shorter phases")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy (pip install py-spy) the schedulers during throughput phases; "
        "raw stacks go to DIR, a summary is printed (skews the figures: profile, don't quote)",
    )
    p.add_argument(
        "--profile-rate",
        type=int,
        default=500,
        help="py-spy samples per second; every thread that is on a CPU is sampled, "
        "so a SQLite worker thread's statements (run without the GIL) count too",
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="sample only the thread holding the GIL: Python's own work, without the "
        "kernel's (fork, mkdir) and SQLite's, which run with the GIL released",
    )
    p.add_argument("--quiet-threshold", type=float, default=15.0)
    p.add_argument("--quiet-timeout", type=float, default=120.0)
    p.add_argument("--max-retries", type=int, default=3)
    ns = p.parse_args(argv)
    global PROFILE_DIR, PROFILE_RATE, PROFILE_GIL
    PROFILE_DIR = ns.profile
    PROFILE_RATE = ns.profile_rate
    PROFILE_GIL = ns.profile_gil
    if ns.quick:
        ns.runs = 1
        ns.duration = min(ns.duration, 4.0)
        ns.items = min(ns.items, 1000)
        ns.quiet_timeout = min(ns.quiet_timeout, 10.0)
        ns.max_retries = 0
    return ns


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(asyncio.run(_main(_parse())))
