"""PostgreSQL's own CPU per webhook delivery and per lock pair, measured on its backends.

Throughput on a shared machine moves with whatever else runs; the CPU the database
server spends on one delivery or one acquire + release pair moves much less. This script
drives the store directly (no HTTP: the statements are the gateway's, since the gateway
calls these same store methods) for a fixed count of operations, and reads the CPU time
(utime + stime, ``/proc/<pid>/stat``) of the PostgreSQL backends serving the benchmark's
own fresh database before and after. Per store process and kind:

* ``deliveries``: ``--count`` signed-looking ``issues`` deliveries (a ~``--body-kib`` KiB
  body, one matched agent, a fresh delivery id each) through ``Store.record_delivery``
  from ``--concurrency`` coroutines, as the gateway records them;
  With ``--depth N`` the agent's queue holds N items first;
* ``locks``: ``--count`` pairs of ``acquire_lock`` + ``release_lock``, each coroutine a
  live run on a key of its own, as ``bench/locks.py``'s load does through the gateway.

Printed per repetition: backend CPU ms per operation, client (this process) CPU ms per
operation, operations/s, and the background processes' CPU (WAL writer and the like,
shared with every other database on the server, so only a hint). ``--perf`` also runs
``perf record`` on the backends during the window (``perf report -i PREFIX.<kind>``).

Compare two versions of corral by running this file with ``PYTHONPATH`` pointing at
each one's ``src`` in turn (interleaved, several repetitions): each repetition makes a
fresh database migrated by the code under test.

    .venv/bin/python bench/pg_server_cpu.py --kinds deliveries,locks --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import DEFAULT_PG_DSN, fresh_database

AGENT = "triage"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_background_pids() -> list[int]:
    """The server's processes that serve no client (WAL writer, checkpointer, ...)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("postgres: ") and any(
            w in cmd for w in ("walwriter", "checkpointer", "background writer", "autovacuum")
        ):
            out.append(int(entry))
    return out


async def backend_pids(dsn: str, dbname: str) -> list[int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        return [int(r[0]) for r in await cur.fetchall()]


def body_of(kib: float, n: int) -> bytes:
    """The body ``bench/webhooks.py`` posts: a realistic ``issues`` delivery of ~``kib`` KiB."""
    from webhooks import issue_payload

    return json.dumps(issue_payload(n, kib)).encode()


async def prepare(store: Any, kind: str, concurrency: int) -> list[Any]:
    from corral.store import AgentSpec, NewRun, TriggerKind

    await store.sync_project(
        [AgentSpec(AGENT, 1, 10_000_000)], scale_cap=None, max_attempts=3, max_reruns=0
    )
    if kind == "locks":
        return [
            await store.create_run(NewRun(agent=AGENT, trigger=TriggerKind.MANUAL))
            for _ in range(concurrency)
        ]
    return []


async def prefill(url: str, depth: int) -> None:
    """``depth`` queued webhook items for the agent, each with its own dedupe key, in one
    statement (the queue counters are kept by the store's triggers, as for any insert)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO corral_queue (agent, trigger_kind, state, enqueued_at, max_attempts,"
            " dedupe_key) SELECT %s, 'webhook', 'queued', now(), 3, 'prefill-' || g"
            " FROM generate_series(1, %s) g",
            (AGENT, depth),
        )


async def drive(
    store: Any, kind: str, count: int, concurrency: int, runs: list[Any], body: bytes
) -> None:
    from corral.store import (
        AgentResult,
        NewItem,
        NewReceipt,
        ReceiptOutcome,
        TriggerKind,
        new_receipt_id,
    )

    todo = iter(range(count))
    headers = {
        "content-type": "application/json",
        "x-github-event": "issues",
        "x-hub-signature-256": "sha256=" + "0" * 64,
        "user-agent": "GitHub-Hookshot/bench",
    }

    async def deliveries(worker: int) -> None:
        for n in todo:
            rid = new_receipt_id()
            delivery = f"bench-{os.getpid()}-{n}-{time.monotonic_ns()}"
            new = NewReceipt(
                id=rid,
                source="github",
                outcome=ReceiptOutcome.ACCEPTED,
                headers=headers | {"x-github-delivery": delivery},
                body=body,
                body_size=len(body),
                verified=True,
                verification="signature verified",
                event="issues",
                delivery_id=delivery,
                results=(AgentResult(AGENT, True, "events: issues"),),
            )
            item = NewItem(
                AGENT,
                TriggerKind.WEBHOOK,
                trigger_detail={"event": "issues", "action": "opened", "receiptId": rid},
                dedupe_key=f"webhook:github:{delivery}:{AGENT}",
            )
            await store.record_delivery(new, [item])

    async def locks(worker: int) -> None:
        run_id = runs[worker].id
        key = f"bench-key-{worker}"
        for _ in todo:
            got = await store.acquire_lock(key, run_id, ttl_seconds=30.0)
            assert type(got).__name__ == "LockGrant", got
            assert await store.release_lock(key, run_id)

    work = deliveries if kind == "deliveries" else locks
    await asyncio.gather(*(work(i) for i in range(concurrency)))


def perf_start(pids: list[int], output: str) -> subprocess.Popen[str] | None:
    """``perf record`` (software clock, call graphs) of the backends into ``output``."""
    try:
        return subprocess.Popen(
            [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-g",
                "-o",
                output,
                "-p",
                ",".join(map(str, pids)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def perf_stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


async def one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    from corral.store import open_store

    async with fresh_database(args.dsn, prefix="bench_pgcpu") as url:
        dbname = str(conninfo_to_dict(url.replace("postgresql+psycopg", "postgresql"))["dbname"])
        store = await open_store(url)
        try:
            runs = await prepare(store, kind, args.concurrency)
            if args.depth:
                await prefill(url, args.depth)
            body = body_of(args.body_kib, 0)
            # Warm-up: fills the pool (every connection opened) and the plan caches.
            await drive(store, kind, args.warmup, args.concurrency, runs, body)
            pids = await backend_pids(args.dsn, dbname)
            background = postgres_background_pids()
            before = {p: proc_cpu_seconds(p) for p in pids + background}
            perf = perf_start(pids, f"{args.perf}.{kind}") if args.perf else None
            if perf is not None:
                await asyncio.sleep(0.3)
            self0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            await drive(store, kind, args.count, args.concurrency, runs, body)
            wall = time.perf_counter() - t0
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            perf_stop(perf)
            after_pids = await backend_pids(args.dsn, dbname)
            after = {p: proc_cpu_seconds(p) for p in pids + background}
        finally:
            await store.close()
    new_backends = sorted(set(after_pids) - set(pids))
    backend_s = sum(after[p] - before[p] for p in pids)
    background_s = sum(after[p] - before[p] for p in background)
    client_s = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    res = {
        "kind": kind,
        "count": args.count,
        "ops_per_s": round(args.count / wall, 1),
        "backend_ms_per_op": round(1000 * backend_s / args.count, 4),
        "client_ms_per_op": round(1000 * client_s / args.count, 4),
        "background_ms_per_op": round(1000 * background_s / args.count, 4),
        "backends": len(pids),
        "backends_opened_during_window": len(new_backends),
    }
    return res


async def _main(args: argparse.Namespace) -> int:
    results = []
    for rep in range(args.reps):
        for kind in args.kinds.split(","):
            res = await one(kind, args)
            res["rep"] = rep
            print(json.dumps(res), flush=True)
            results.append(res)
    for kind in args.kinds.split(","):
        mine = [r for r in results if r["kind"] == kind]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in mine[0]
            if isinstance(mine[0][k], (int, float)) and k != "rep"
        }
        print(json.dumps({"kind": kind, "median_of": len(mine)} | med), flush=True)
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kinds", default="deliveries,locks", help="deliveries, locks")
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--count", type=int, default=3000, help="operations measured per repetition")
    p.add_argument("--warmup", type=int, default=300, help="operations before the window")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--body-kib", type=float, default=6.0)
    p.add_argument("--depth", type=int, default=0, help="items queued before the warm-up")
    p.add_argument("--perf", metavar="PREFIX", help="perf record the backends to PREFIX.<kind>")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(_parse())))
