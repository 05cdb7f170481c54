"""Wake-ups across processes: an item queued by one process, claimed by a scheduler in another.

One real ``corral start --headless`` (default options: dispatch poll 0.2 s) on a fresh
store; this process enqueues straight into the store (as another scheduler's gateway,
a cron tick in another process, or ``corral run`` elsewhere does) at ``--rate`` items/s,
open loop. Per item, ``claimed_at - enqueued_at`` as the store recorded them: the
intake's commit, the wake-up (a notice on PostgreSQL, the poll otherwise) and the claim
transaction. Without notices it is about half the poll on average; with them, a few ms.

``--trigger-cost``: what migration 0014's triggers add to intake and claims on
PostgreSQL, measured in one process on a fresh schema, alternating rounds with the
notice triggers enabled and disabled (``ALTER TABLE … DISABLE TRIGGER``), so that a busy
machine's drift hits both alike: sequential ``store.enqueue`` calls (one transaction and
one notice each), then claiming them in batches of 64. Medians of the rounds, and the
ratio.

``--idle-waiters N``: what run ends cost a process in which N runs wait for keys that no
run end touches (``rlock --wait``, each its own key, held by a run that never lets go). In
one process: a real store, the agent API (requests made in-process, ASGI), a
``RunExecutor`` running ``--runs`` runs of ``true`` one after another. Rounds alternate
two modes: ``narrow`` (as built: a run's end notifies the topics it changed, D107) and
``broadcast`` (each run end also wakes every waiter, as ``notify_all`` did before D107; the
mode adds exactly that call). The waits' fallback poll is made ``--poll`` seconds (60 by
default, instead of 0.5) so that what is counted is what the run ends cause. Per mode,
medians of the rounds: this process's CPU (``time.process_time``, every thread) per run
end, and how many times the waiters looked at the store (``wait_for_lock`` calls) per run
end; plus the CPU over an equal time with no run ending.

``.venv/bin/python bench/wakeups.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from _common import DEFAULT_PG_DSN, ForeignCpu, Result, fresh_schema, summarize_ms

from corral.credentials import CredentialStore
from corral.errors import StoreBusy
from corral.gateway.app import create_agent_app
from corral.project import load_project
from corral.scaffold import create_project
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.executor import RunExecutor
from corral.scheduler.service import sync_config
from corral.store import AgentSpec, NewItem, NewRun, RunState, TriggerKind, open_store
from corral.store._notify import RUN_ENDED, Changes
from scheduler import TRUE_ARGV, fleet, items_and_runs, wait_settled, warm_up

AGENT = "bench"


async def measure(backend: str, dsn: str, rate: float, duration: float) -> dict[str, Any]:
    foreign = ForeignCpu()
    async with fleet(backend, dsn, schedulers=1, scale=16, command=TRUE_ARGV) as f:
        await warm_up(f, 16)
        foreign.start()
        loop = asyncio.get_running_loop()
        n = max(1, round(rate * duration))
        ids: list[int] = []
        start = loop.time() + 0.05
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            result = await f.store.enqueue(NewItem(AGENT, TriggerKind.WEBHOOK))
            ids.append(result.item.id)
        await wait_settled(f.store, 120.0)
        pairs = await items_and_runs(f.store, ids)
        waits = [(i.claimed_at - i.enqueued_at).total_seconds() for i, _ in pairs]
        return {
            "backend": backend,
            "enqueued_to_claimed": summarize_ms(waits),
            "mean_ms": round(statistics.fmean(waits) * 1000, 2),
            "foreign_cpu_percent": foreign.stop(own_pids=f.pids),
        }


_NOTICE_TRIGGERS = {
    "corral_queue": ("corral_queue_inserted", "corral_queue_updated"),
}


async def trigger_cost(dsn: str, items: int, rounds: int) -> dict[str, Any]:
    """Per-enqueue and per-claimed-item microseconds, notice triggers on and off."""
    import psycopg

    timings: dict[str, dict[str, list[float]]] = {
        "on": {"enqueue_us": [], "claim_us": []},
        "off": {"enqueue_us": [], "claim_us": []},
    }
    async with fresh_schema(dsn, prefix="bench_notify") as url:
        store = await open_store(url)
        admin = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            await store.sync_project(
                [AgentSpec(AGENT, 1_000_000, 1_000_000)],
                scale_cap=None,
                max_attempts=3,
                max_reruns=10,
            )
            for i in range(rounds * 2):
                mode = "on" if i % 2 == 0 else "off"
                verb = "ENABLE" if mode == "on" else "DISABLE"
                for table, triggers in _NOTICE_TRIGGERS.items():
                    for trigger in triggers:
                        await admin.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")  # type: ignore[arg-type]
                t0 = time.perf_counter()
                for _ in range(items):
                    await store.enqueue(NewItem(AGENT, TriggerKind.WEBHOOK))
                t1 = time.perf_counter()
                claimed = 0
                while claimed < items:
                    got = await store.claim("bench", lease_seconds=600, limit=64)
                    if not got:
                        break
                    claimed += len(got)
                t2 = time.perf_counter()
                timings[mode]["enqueue_us"].append((t1 - t0) / items * 1e6)
                timings[mode]["claim_us"].append((t2 - t1) / max(claimed, 1) * 1e6)
        finally:
            await admin.close()
            await store.close()
    out: dict[str, Any] = {}
    for mode, figures in timings.items():
        for key, values in figures.items():
            out[f"{key}_{mode}"] = round(statistics.median(values), 1)
    for key in ("enqueue_us", "claim_us"):
        out[f"{key}_ratio"] = round(out[f"{key}_on"] / out[f"{key}_off"], 3)
    return out


async def _asgi_post(app: Any, path: str, secret: str, body: dict[str, Any]) -> int:
    """POST ``body`` to the in-process app as a run with ``secret``; the status."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"authorization", f"Bearer {secret}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))

    await app(scope, receive, send)
    return statuses[0]


@contextlib.asynccontextmanager
async def _store_url(backend: str, dsn: str, tmp: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'state.db'}"
    else:
        async with fresh_schema(dsn, prefix="bench_idle") as url:
            yield url


def _broadcasting(changes: Changes) -> Callable[[], None]:
    """Make every run end wake everyone, as before D107; returns the undo."""
    busy = False

    def everyone() -> None:
        nonlocal busy
        if not busy:  # notify_all calls this subscriber too
            busy = True
            try:
                changes.notify_all()
            finally:
                busy = False

    return changes.subscribe(RUN_ENDED, everyone)


async def _claim_one(store: Any) -> Any:
    """Queue one item of ``hello`` and claim it; tried again while the store is busy (the
    machine these run on is shared)."""
    for attempt in range(10):
        try:
            queued = await store.enqueue(NewItem("hello", TriggerKind.MANUAL))
            [claim] = await store.claim("bench", lease_seconds=60, limit=1, item_id=queued.item.id)
            return claim
        except StoreBusy:
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def idle_waiters(
    backend: str, dsn: str, waiters: int, runs: int, rounds: int, poll: float
) -> dict[str, Any]:
    """CPU and store looks per run end with ``waiters`` idle lock waiters; see the module
    docstring."""
    from corral.gateway.agent_api import _handlers

    _handlers.POLL_SECONDS = poll  # type: ignore[misc]
    with tempfile.TemporaryDirectory(prefix="corral-bench-idle-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "proj"
        create_project(root)
        config = root / "agents" / "hello" / "config.toml"
        kept = [ln for ln in config.read_text().splitlines() if not ln.startswith("command =")]
        config.write_text("\n".join([*kept, 'command = "true"']) + "\n")
        project = load_project(root)
        async with _store_url(backend, dsn, tmp) as url, await open_store(url) as store:
            await sync_config(store, project)
            link = AgentLink("http://127.0.0.1:1", changes=store.changes)
            app = create_agent_app(project, store, link)
            looks = 0
            look = store.wait_for_lock

            async def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal looks
                looks += 1
                return await look(*args, **kwargs)

            store.wait_for_lock = counted  # type: ignore[method-assign]
            holder = await store.create_run(NewRun(agent="hello", trigger=TriggerKind.MANUAL))
            keys = [f"idle://{i}" for i in range(waiters)]
            for key in keys:
                await store.acquire_lock(key, holder.id, ttl_seconds=7200)
            requests = []
            for started, key in enumerate(keys):
                while looks < started - 20:  # a few at a time: the pool is small
                    await asyncio.sleep(0.01)
                run = await store.create_run(NewRun(agent="hello", trigger=TriggerKind.MANUAL))
                secret, _ = link.issue(run.id, "hello", "manual")
                body = {"key": key, "wait": True, "timeout": 7200}
                requests.append(
                    asyncio.ensure_future(_asgi_post(app, "/agent/locks/acquire", secret, body))
                )
            while looks < waiters:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            executor = RunExecutor(
                project, store, link=link, credentials=CredentialStore(tmp / "credentials")
            )
            per_mode: dict[str, dict[str, list[float]]] = {
                mode: {
                    "cpu_ms_per_run": [],
                    "looks_per_run": [],
                    "idle_cpu_ms_per_s": [],
                }
                for mode in ("narrow", "broadcast")
            }
            try:
                for i in range(rounds * 2):
                    mode = "narrow" if i % 2 == 0 else "broadcast"
                    undo = _broadcasting(store.changes) if mode == "broadcast" else None
                    try:
                        cpu0, wall0, looks0 = time.process_time(), time.monotonic(), looks
                        for _ in range(runs):
                            claim = await _claim_one(store)
                            done = await executor.execute(claim)
                            assert done.run.state is RunState.SUCCEEDED, done.run.error
                        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                        stream_looks = looks - looks0
                        cpu1, looks1 = time.process_time(), looks
                        await asyncio.sleep(wall)  # the same time, no run ending
                        idle_cpu, idle_looks = time.process_time() - cpu1, looks - looks1
                    finally:
                        if undo is not None:
                            undo()
                    figures = per_mode[mode]
                    figures["cpu_ms_per_run"].append(cpu / runs * 1000)
                    figures["looks_per_run"].append(stream_looks / runs)
                    figures["idle_cpu_ms_per_s"].append(idle_cpu / wall * 1000)
                    print(
                        f"  {backend} {mode}: {cpu / runs * 1000:.2f} ms CPU and "
                        f"{stream_looks / runs:.1f} waiter looks per run end; the same "
                        f"time without run ends: {idle_cpu / wall * 1000:.0f} ms CPU/s, "
                        f"{idle_looks / wall:.0f} looks/s",
                        flush=True,
                    )
            finally:
                for request in requests:
                    request.cancel()
                await asyncio.gather(*requests, return_exceptions=True)
    out: dict[str, Any] = {"backend": backend, "waiters": waiters, "runs": runs}
    for mode, figures in per_mode.items():
        for key, values in figures.items():
            out[f"{key}_{mode}"] = round(statistics.median(values), 2)
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--backends", default="pg,sqlite", help="comma-separated: sqlite, pg")
    p.add_argument("--rate", type=float, default=10.0, help="offered rate, items/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--quick", action="store_true", help="one repetition of 5 s")
    p.add_argument(
        "--trigger-cost",
        action="store_true",
        help="instead: what the notice triggers cost intake and claims (PostgreSQL)",
    )
    p.add_argument("--items", type=int, default=500, help="--trigger-cost: items per round")
    p.add_argument("--rounds", type=int, default=5, help="--trigger-cost: rounds per mode")
    p.add_argument(
        "--idle-waiters",
        type=int,
        default=0,
        metavar="N",
        help="instead: CPU per run end with N idle rlock --wait waiters, run ends narrowed "
        "(D107) against broadcast, alternating rounds (--rounds per mode)",
    )
    p.add_argument("--ends", type=int, default=50, help="--idle-waiters: run ends per round")
    p.add_argument(
        "--poll", type=float, default=60.0, help="--idle-waiters: the waits' fallback poll, s"
    )
    args = p.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 5.0
    result = Result("wakeups", params=vars(args))
    if args.idle_waiters:
        for backend in args.backends.split(","):
            fig = await idle_waiters(
                backend,
                args.dsn,
                args.idle_waiters,
                args.ends,
                1 if args.quick else args.rounds,
                args.poll,
            )
            result.figures[f"idle_waiters_{backend}"] = fig
            print(
                f"{backend}, {args.idle_waiters} idle waiters, per run end (narrowed / "
                f"broadcast): {fig['cpu_ms_per_run_narrow']} / "
                f"{fig['cpu_ms_per_run_broadcast']} ms CPU; waiter looks "
                f"{fig['looks_per_run_narrow']} / {fig['looks_per_run_broadcast']}; no run "
                f"ending: {fig['idle_cpu_ms_per_s_narrow']} / "
                f"{fig['idle_cpu_ms_per_s_broadcast']} ms CPU/s"
            )
        print(f"wrote {result.write()}")
        return
    if args.trigger_cost:
        fig = await trigger_cost(args.dsn, args.items, args.rounds)
        result.figures["trigger_cost"] = fig
        print(
            f"enqueue {fig['enqueue_us_on']} us with the notice triggers, "
            f"{fig['enqueue_us_off']} without (x{fig['enqueue_us_ratio']}); claim per item "
            f"{fig['claim_us_on']} / {fig['claim_us_off']} us (x{fig['claim_us_ratio']})"
        )
        print(f"wrote {result.write()}")
        return
    for backend in args.backends.split(","):
        reps = []
        for rep in range(args.runs):
            t0 = time.monotonic()
            fig = await measure(backend, args.dsn, args.rate, args.duration)
            reps.append(fig)
            result.runs.append(fig)
            s = fig["enqueued_to_claimed"]
            print(
                f"{backend} rep {rep + 1}: enqueued->claimed p50 {s['p50_ms']} "
                f"p99 {s['p99_ms']} max {s['max_ms']} mean {fig['mean_ms']} ms "
                f"(others used {fig['foreign_cpu_percent']}% CPU; {time.monotonic() - t0:.0f} s)"
            )
        result.figures[backend] = {
            key: statistics.median(r["enqueued_to_claimed"][key] for r in reps)
            for key in ("p50_ms", "p99_ms", "max_ms")
        }
    print(f"wrote {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
