"""The dashboard's task board: what a change costs it, and why its notice is sent in-process.

``--render``: the work each change of the board costs the gateway (done once per change
and shared by every open tab of one view): reading every task of the board and rendering
the columns, for boards of ``--sizes`` tasks on SQLite and PostgreSQL. Medians of
``--rounds`` renders, ms.

``--notify-cost`` (PostgreSQL): what a ``pg_notify`` in every claim transaction would cost
the board's hot path. ``--procs`` processes (1, 4, 16 by default), each with its own
connection, commit one-row updates (each its own row: no row contention) in autocommit
for ``--seconds`` s, with and without ``SELECT pg_notify(...)`` in the same statement,
alternating rounds. NOTIFY takes a database-wide lock at commit that is held until the
commit is flushed, so notifying commits are serialised where plain ones share WAL
flushes (group commit). Per variant and concurrency: commits/s and p50/p99 latency.

``.venv/bin/python bench/taskboard.py [--render] [--notify-cost] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _common import DEFAULT_PG_DSN, fresh_store, machine_info, summarize_ms

from corral.gateway.dashboard._render import Renderer
from corral.gateway.dashboard._taskboard import BoardQuery, board_context
from corral.store import open_store
from corral.tasks._model import TaskSpec, TaskStatus

CHANNEL = "corral_bench_taskboard"


# -- render ----------------------------------------------------------------------------


async def _fill(url: str, size: int) -> Any:
    store = await open_store(url)
    specs = []
    for i in range(size):
        requires = (f"T{i - 1:05d}",) if i % 5 else ()
        labels = ("api",) if i % 2 else ("ui",)
        title = f"task {i} <with markup>"
        specs.append(
            TaskSpec(
                id=f"T{i:05d}",
                project="web",
                title=title,
                priority=1 + i % 10,
                requires=requires,
                labels=labels,
            )
        )
    for start in range(0, size, 1000):
        await store.add_tasks(specs[start : start + 1000])
    # A tenth claimed, a tenth done.
    for _ in range(size // 10):
        task = await store.claim_task(claimer="dev", project="web")
        if task is None:
            break
        if int(task.id[1:]) % 2:
            await store.finish_task("web", task.id, task.token, TaskStatus.DONE)
    return store


async def render_round(url: str, size: int, rounds: int) -> dict[str, Any]:
    store = await _fill(url, size)
    try:
        dash = SimpleNamespace(scheduler=SimpleNamespace(store=store))
        renderer = Renderer()
        times = []
        length = 0
        for _ in range(rounds):
            started = time.perf_counter()
            context = await board_context(dash, BoardQuery())  # type: ignore[arg-type]
            html = renderer.render("_tasks.html", context | {"query": BoardQuery()})
            times.append(time.perf_counter() - started)
            length = len(html)
        return {"tasks": size, "html_kb": round(length / 1024), **summarize_ms(times)}
    finally:
        await store.close()


async def render_bench(sizes: list[int], rounds: int, pg_dsn: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        for dialect in ("sqlite", "postgresql"):
            async with fresh_store(dialect, pg_dsn) as url:
                out[f"{dialect}/{size}"] = await render_round(url, size, rounds)
    return out


# -- notify cost -----------------------------------------------------------------------


def _worker(dsn: str, row: int, notify: bool, seconds: float, go: Any, queue: Any) -> None:
    import psycopg

    plain = "UPDATE bench_rows SET n = n + 1 WHERE id = %s"
    noticed = (
        "WITH u AS (UPDATE bench_rows SET n = n + 1 WHERE id = %s RETURNING id) "
        f"SELECT pg_notify('{CHANNEL}', 'tasks') FROM u"
    )
    sql = noticed if notify else plain
    latencies = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        queue.put("ready")
        go.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            conn.execute(sql, (row,))  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - began)
    queue.put(latencies)


def notify_round(dsn: str, procs: int, notify: bool, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(dsn, i + 1, notify, seconds, go, queue))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:  # every process connected first
        assert queue.get() == "ready"
    go.set()
    latencies: list[float] = []
    for _ in workers:
        latencies += queue.get()
    for w in workers:
        w.join()
    return {"commits_per_s": round(len(latencies) / seconds), **summarize_ms(latencies)}


def notify_bench(dsn: str, levels: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_rows")
        conn.execute("CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO bench_rows (id) SELECT generate_series(1, 64)")
    results: dict[str, Any] = {}
    try:
        for procs in levels:
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "notify": []}
            for _ in range(rounds):
                for variant in ("plain", "notify"):
                    runs[variant].append(notify_round(dsn, procs, variant == "notify", seconds))
            for variant, found in runs.items():
                results[f"{variant}/{procs}"] = {
                    key: statistics.median(r[key] for r in found) for key in found[0]
                }
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_rows")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--notify-cost", action="store_true")
    parser.add_argument("--sizes", default="200,1000,5000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--procs", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pg", default=DEFAULT_PG_DSN)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    both = not (args.render or args.notify_cost)
    out: dict[str, Any] = {"machine": machine_info()}
    if args.render or both:
        sizes = [int(s) for s in args.sizes.split(",")]
        out["render"] = asyncio.run(render_bench(sizes, args.rounds, args.pg))
        print("board read + render per change (ms):")
        for key, value in out["render"].items():
            print(
                f"  {key:18} p50 {value['p50_ms']:8.1f}  p99 {value['p99_ms']:8.1f}"
                f"  {value['html_kb']} KiB"
            )
    if args.notify_cost or both:
        levels = [int(p) for p in args.procs.split(",")]
        out["notify"] = notify_bench(args.pg, levels, args.seconds, 3)
        print("one-row commits, PostgreSQL, with and without pg_notify (medians of 3 rounds):")
        for key, value in out["notify"].items():
            print(
                f"  {key:10} {value['commits_per_s']:8.0f}/s  p50 {value['p50_ms']:6.2f} ms"
                f"  p99 {value['p99_ms']:6.2f} ms"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
