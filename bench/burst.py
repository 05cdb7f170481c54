"""Burst benchmark: one agent's burst of runs against another agent's dispatch and /health.

A real ``corral start --headless --port 0`` on a temporary project with two agents on
the host runtime, both running ``/bin/true`` (argv, no shell): ``burst`` at scale 16
and ``steady`` at scale 4. While ``burst`` is paused, 1,000 of its items are enqueued
straight into the store; then it is resumed (the burst), and for as long as the burst
lasts:

* ``steady`` gets one ``POST /control/runs`` every 100 ms (open loop); its dispatch
  latency is ``run.started_at - item.enqueued_at`` as the store stamped them (the
  item when the intake transaction inserts it, the run right after its process was
  spawned), as bench/scheduler.py measures it; the POST's own round trip too;
* ``GET /health`` is polled every 20 ms (open loop) and its round trip recorded.

The same phases run without the burst first (the baseline), so each figure has its
quiet counterpart. SQLite and PostgreSQL; ``--reps`` repetitions (medians),
``--quick`` for one short one. ``.venv/bin/python bench/burst.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_PG_DSN,
    ForeignCpu,
    Result,
    median_of_runs,
    print_table,
    summarize_ms,
)

import scheduler
from corral.store import ItemState, NewItem, RunState, Store, TriggerKind, open_store
from scheduler import (
    TOKEN,
    SchedulerProc,
    start_scheduler,
    state_url_for,
    stop_scheduler,
)

BURST, STEADY = "burst", "steady"


def write_project(root: Path, state_url: str, *, burst_scale: int, items: int) -> None:
    """Two agents running ``/bin/true``: ``burst`` (scale ``burst_scale``) and ``steady``."""
    root.mkdir(parents=True)
    (root / "config.toml").write_text(f'[state]\nurl = "{state_url}"\n')
    for name, scale in ((BURST, burst_scale), (STEADY, 4)):
        d = root / "agents" / name
        d.mkdir(parents=True)
        (d / "SKILL.md").write_text(f"---\nname: {name}\n---\nbench\n")
        (d / "config.toml").write_text(
            f"scale = {scale}\ntimeout = 600\nmaxWorkQueueSize = {items * 2 + 1000}\n"
            '[harness]\ncommand = ["/bin/true"]\n'
        )


@contextlib.asynccontextmanager
async def corral(
    backend: str, dsn: str, burst_scale: int, items: int
) -> AsyncIterator[tuple[Store, SchedulerProc]]:
    tmp = Path(tempfile.mkdtemp(prefix="corral-burst-"))
    try:
        async with state_url_for(backend, tmp, dsn) as url:
            root, home = tmp / "project", tmp / "home"
            home.mkdir()
            write_project(root, url, burst_scale=burst_scale, items=items)
            sched = await start_scheduler(root, home, 0)
            try:
                store = await open_store(url)
                try:
                    yield store, sched
                finally:
                    await store.close()
            finally:
                await stop_scheduler(sched)
                if LOG_DIR is not None:  # --log-dir: keep the scheduler's log
                    LOG_DIR.mkdir(parents=True, exist_ok=True)
                    shutil.copy(sched.log, LOG_DIR / f"scheduler-{backend}-{sched.pid}.log")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60.0,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
    )


async def _open_items(store: Store, agent: str) -> int:
    states = [ItemState.QUEUED, ItemState.CLAIMED]
    return len(await store.list_items(agent=agent, states=states, limit=100_000))


async def _probe(url: str, stop: asyncio.Event, steady_every: float, health_every: float) -> Any:
    """Open-loop POSTs for ``steady`` and /health polls until ``stop``; their timings."""
    loop = asyncio.get_running_loop()
    health: list[float] = []
    posts: list[float] = []
    ids: list[int] = []
    tasks: set[asyncio.Task[None]] = set()
    async with _client() as client:
        await asyncio.gather(*(client.get(f"{url}/health") for _ in range(8)))

        async def one_health() -> None:
            t0 = time.perf_counter()
            r = await client.get(f"{url}/health")
            health.append(time.perf_counter() - t0)
            r.raise_for_status()

        async def one_post() -> None:
            t0 = time.perf_counter()
            r = await client.post(f"{url}/control/runs", json={"agent": STEADY})
            posts.append(time.perf_counter() - t0)
            r.raise_for_status()
            ids.append(r.json()["item"]["id"])

        start = loop.time()
        n_h = n_p = 0
        while not stop.is_set():
            now = loop.time()
            if now >= start + n_h * health_every:
                n_h += 1
                tasks.add(t := asyncio.create_task(one_health()))
                t.add_done_callback(tasks.discard)
            if now >= start + n_p * steady_every:
                n_p += 1
                tasks.add(t := asyncio.create_task(one_post()))
                t.add_done_callback(tasks.discard)
            nxt = min(start + n_h * health_every, start + n_p * steady_every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, nxt - loop.time()))
        if tasks:
            await asyncio.gather(*list(tasks))
    return health, posts, ids


async def _steady_latency(store: Store, ids: list[int]) -> list[float]:
    deadline = time.monotonic() + 120
    while await _open_items(store, STEADY) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    wanted = set(ids)
    items = [i for i in await store.list_items(agent=STEADY, limit=100_000) if i.id in wanted]
    runs = {r.id: r for r in await store.list_runs(agent=STEADY, limit=100_000)}
    out = []
    for item in items:
        run = runs.get(item.run_id) if item.run_id is not None else None
        if run is None or run.started_at is None:
            raise RuntimeError(f"steady item {item.id} has no started run ({item.state})")
        out.append((run.started_at - item.enqueued_at).total_seconds())
    return out


PROFILE: Path | None = None  # --profile FILE: py-spy the scheduler during the burst
LOG_DIR: Path | None = None


async def _py_spy(pid: int) -> asyncio.subprocess.Process:
    """``py-spy record`` (collapsed stacks, idle excluded) on the scheduler."""
    assert PROFILE is not None
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")),
        *("record", "--pid", str(pid), "--rate", "250", "--format", "raw"),
        *("--nonblocking", "--output", f"{PROFILE}.{pid}"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(1.0)  # py-spy attaches
    return spy


async def phase(
    store: Store, sched: SchedulerProc, *, items: int, quiet_seconds: float
) -> dict[str, Any]:
    """The steady probes for ``quiet_seconds`` (no burst) or for as long as ``items``
    burst runs take to drain (``items`` > 0)."""
    stop = asyncio.Event()
    if items:
        await store.set_paused(BURST, True)
        for _ in range(items):
            await store.enqueue(NewItem(agent=BURST, trigger=TriggerKind.MANUAL))
        await asyncio.sleep(0.3)
    probe = asyncio.create_task(_probe(sched.url, stop, 0.1, 0.02))
    await asyncio.sleep(0.5)  # the probes are going before the burst starts
    spy = await _py_spy(sched.pid) if items and PROFILE is not None else None
    t0 = time.monotonic()
    if items:
        await store.set_paused(BURST, False)
        while await _open_items(store, BURST):
            if time.monotonic() - t0 > 600:
                raise TimeoutError("the burst did not drain")
            await asyncio.sleep(0.2)
    else:
        await asyncio.sleep(quiet_seconds)
    seconds = time.monotonic() - t0
    if spy is not None:
        spy.send_signal(2)
        await spy.wait()
    stop.set()
    health, posts, ids = await probe
    lat = await _steady_latency(store, ids)
    burst_runs = await store.list_runs(agent=BURST, limit=items + 100) if items else []
    bad = sum(1 for r in burst_runs if r.state is not RunState.SUCCEEDED)
    s_lat, s_h, s_p = summarize_ms(lat), summarize_ms(health), summarize_ms(posts)
    return {
        "seconds": round(seconds, 2),
        "burst_runs_per_s": round(items / seconds, 1) if items else 0.0,
        "steady_runs": len(lat),
        "steady_dispatch_p50_ms": s_lat["p50_ms"],
        "steady_dispatch_p99_ms": s_lat["p99_ms"],
        "steady_dispatch_max_ms": s_lat["max_ms"],
        "health_p50_ms": s_h["p50_ms"],
        "health_p99_ms": s_h["p99_ms"],
        "health_max_ms": s_h["max_ms"],
        "post_p50_ms": s_p["p50_ms"],
        "post_p99_ms": s_p["p99_ms"],
        "burst_not_succeeded": bad,
    }


async def one_rep(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    foreign = ForeignCpu()
    async with corral(backend, args.dsn, args.scale, args.items) as (store, sched):
        # warm-up: imports, first forks, pools
        for agent in (BURST, STEADY):
            for _ in range(8):
                await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
        while await _open_items(store, BURST) or await _open_items(store, STEADY):
            await asyncio.sleep(0.1)
        foreign.start()
        quiet = await phase(store, sched, items=0, quiet_seconds=args.quiet_seconds)
        burst = await phase(store, sched, items=args.items, quiet_seconds=0)
        return {
            "backend": backend,
            "quiet": quiet,
            "burst": burst,
            "foreign_cpu_percent": foreign.stop(own_pids=[sched.pid]),
        }


async def measure_spawns(n: int, concurrency: int, off_loop: bool) -> dict[str, Any]:
    """In this process: ``n`` starts of ``/bin/true`` through the runtime's start_process,
    ``concurrency`` at a time, each waited for; meanwhile a 1 ms ticker measures how long
    the event loop went without running it (what /health would wait)."""
    from corral.runtime import _children
    from corral.runtime.host import start_process

    os.environ.pop(_children.ON_LOOP_ENV, None)
    if not off_loop:
        os.environ[_children.ON_LOOP_ENV] = "1"
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()
    env = {"PATH": "/usr/bin:/bin"}
    tmp = Path(tempfile.mkdtemp(prefix="corral-spawns-"))

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last - 0.001)
            last = now

    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            proc = await start_process(["/bin/true"], cwd=tmp, env=env, stdin=None)
            await proc.wait()

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(n)))
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        await tick
        os.environ.pop(_children.ON_LOOP_ENV, None)
        shutil.rmtree(tmp, ignore_errors=True)
    lag = summarize_ms(gaps)
    return {
        "off_loop": off_loop,
        "starts_per_s": round(n / seconds, 1),
        "loop_lag_p50_ms": lag["p50_ms"],
        "loop_lag_p99_ms": lag["p99_ms"],
        "loop_lag_max_ms": lag["max_ms"],
    }


async def _spawns(args: argparse.Namespace) -> int:
    """``--only spawns``: start_process on and off the loop, interleaved, medians."""
    from corral.runtime._children import use_pidfd_child_watcher

    use_pidfd_child_watcher()  # as `corral start` does
    result = Result("burst-spawns", params={"starts": args.items, "concurrency": args.scale})
    reps: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for i in range(args.reps):
        for off in (False, True):
            rep = await measure_spawns(args.items, args.scale, off)
            print(f"  rep {i + 1}: {rep}", flush=True)
            reps[off].append(rep)
            result.runs.append(rep)
    rows = []
    for off in (False, True):
        fig = median_of_runs(reps[off])
        result.figures["off_loop" if off else "on_loop"] = fig
        rows.append(
            [
                "worker thread (D51)" if off else "on the loop (asyncio)",
                fig["starts_per_s"],
                fig["loop_lag_p50_ms"],
                fig["loop_lag_p99_ms"],
                fig["loop_lag_max_ms"],
            ]
        )
    print_table(
        f"{args.items} starts of /bin/true, {args.scale} at a time, and a 1 ms ticker",
        ["fork/exec", "starts/s", "lag p50 ms", "lag p99 ms", "lag max ms"],
        rows,
    )
    print(f"wrote {result.write()}")
    return 0


_ON_LOOP: dict[str, str] = {}  # added to the scheduler's environment (see --compare)
_clean_env = scheduler._clean_env
scheduler._clean_env = lambda home: _clean_env(home) | _ON_LOOP


async def _main(args: argparse.Namespace) -> int:
    global PROFILE, LOG_DIR
    PROFILE, LOG_DIR = args.profile, args.log_dir
    if args.only == "spawns":
        return await _spawns(args)
    if args.quick:
        args.reps, args.quiet_seconds = 1, 3.0
    backends = args.backends.split(",")
    # --compare: each repetition twice, processes started on the loop (as before D51)
    # and off it, interleaved so that both see the same noise of a shared machine.
    modes = [True, False] if args.compare else [args.spawn_on_loop]
    result = Result(
        "burst",
        params={
            "items": args.items,
            "burst_scale": args.scale,
            "steady_every_ms": 100,
            "health_every_ms": 20,
            "reps": args.reps,
            "backends": backends,
            "label": args.label,
            "spawn_on_loop": modes,
        },
    )
    rows = []
    for backend in backends:
        reps: dict[bool, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for i in range(args.reps):
            for on_loop in modes:
                _ON_LOOP.clear()
                if on_loop:
                    _ON_LOOP["CORRAL_SPAWN_ON_LOOP"] = "1"
                where = "on the loop" if on_loop else "off the loop"
                print(f"{backend}, spawns {where}: repetition {i + 1} ...", flush=True)
                rep = await one_rep(backend, args) | {"spawn_on_loop": on_loop}
                print(f"  {rep}", flush=True)
                reps[on_loop].append(rep)
                result.runs.append(rep)
        for on_loop in modes:
            done = reps[on_loop]
            fig = {
                "quiet": median_of_runs([r["quiet"] for r in done]),
                "burst": median_of_runs([r["burst"] for r in done]),
                "foreign_cpu_percent": median_of_runs(
                    [{"v": r["foreign_cpu_percent"]} for r in done]
                )["v"],
            }
            where = "on_loop" if on_loop else "off_loop"
            result.figures[f"{backend}_{where}"] = fig
            for name in ("quiet", "burst"):
                f = fig[name]
                rows.append(
                    [
                        f"{backend} {where}",
                        name,
                        f["steady_dispatch_p50_ms"],
                        f["steady_dispatch_p99_ms"],
                        f["health_p50_ms"],
                        f["health_p99_ms"],
                        f["post_p99_ms"],
                        f["burst_runs_per_s"],
                    ]
                )
    print_table(
        f"burst of {args.items} runs (scale {args.scale}) vs a steady agent and /health",
        [
            "store, spawns",
            "phase",
            "B dispatch p50 ms",
            "B dispatch p99 ms",
            "/health p50 ms",
            "/health p99 ms",
            "POST p99 ms",
            "burst runs/s",
        ],
        rows,
    )
    print(f"wrote {result.write()}")
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--backends", default="sqlite,pg", help="comma-separated: sqlite, pg")
    p.add_argument("--items", type=int, default=1000, help="runs in the burst")
    p.add_argument("--scale", type=int, default=16, help="the burst agent's scale")
    p.add_argument("--quiet-seconds", type=float, default=5.0, help="baseline phase length")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--quick", action="store_true", help="one repetition, short baseline")
    p.add_argument("--profile", type=Path, help="py-spy the scheduler in the burst (file)")
    p.add_argument(
        "--spawn-on-loop", action="store_true", help="CORRAL_SPAWN_ON_LOOP=1 (as before D51)"
    )
    p.add_argument(
        "--compare", action="store_true", help="each repetition on and off the loop, interleaved"
    )
    p.add_argument(
        "--only",
        default="burst",
        choices=["burst", "spawns"],
        help="burst: a real corral start; spawns: start_process alone, on vs off the loop",
    )
    p.add_argument("--log-dir", type=Path, help="keep the schedulers' logs here")
    p.add_argument("--label", default="", help="a note kept in the JSON (which code ran)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(_parse())))
