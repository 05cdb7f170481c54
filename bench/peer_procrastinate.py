"""Peer side of the scheduler benchmark: procrastinate on the same PostgreSQL.

procrastinate (https://github.com/procrastinate-org/procrastinate) is a
PostgreSQL-backed task queue for Python: jobs are rows, workers claim them with
``FOR UPDATE SKIP LOCKED`` and are woken by LISTEN/NOTIFY. It is the closest
existing thing to corral's PostgreSQL dispatcher, so corral's scheduler figures
are quoted as ratios against it, measured in the same run.

The job is the same trivial agent corral's benchmark runs: spawn ``/bin/true``
with ``asyncio.create_subprocess_exec`` and wait for it.

Figures (see docs/benchmarks.md):

* latency: jobs deferred one by one at a fixed offered rate (open loop); for each,
  ``time.time()`` right after ``defer_async`` returned (the job is committed) to
  ``time.time()`` in the worker right after ``create_subprocess_exec`` returned
  (the child has exec'd). p50 / p90 / p99 / max.
* throughput: N jobs deferred in one batch while the workers are idle; N divided by
  the time from the batch's commit until every job is ``succeeded`` in the database.

Workers always run in their own processes (one per worker), the deferring client
in this one. Use from another benchmark::

    from peer_procrastinate import measure_procrastinate
    figures = await measure_procrastinate(dsn, workers=2)

or as a script: ``.venv/bin/python bench/peer_procrastinate.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import procrastinate
import psycopg
from _common import (
    DEFAULT_PG_DSN,
    ForeignCpu,
    Result,
    fresh_database,
    median_of_runs,
    print_table,
    summarize_ms,
    wait_for_quiet,
)

TASK_NAME = "bench_spawn_true"
TRUE = "/bin/true"

# procrastinate's own defaults, restated so the figures say what was used.
DEFAULT_CONCURRENCY = 16
DEFAULT_POLLING_INTERVAL = 5.0  # procrastinate.worker.FETCH_JOB_POLLING_INTERVAL
DEFAULT_LISTEN_NOTIFY = True


def _emit(line: str) -> None:
    # One write(2) per line: atomic on a pipe (< PIPE_BUF), no buffering surprises.
    os.write(1, (line + "\n").encode())


def _make_app(dsn: str, pool_size: int) -> tuple[procrastinate.App, Any]:
    """An App whose only task spawns /bin/true and reports when it started/ended.

    The deferring side uses the same App (the task object gives it the name);
    the body only runs in the worker processes, where stdout is a pipe to the
    measuring process.
    """
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=pool_size, max_size=pool_size
        )
    )

    @app.task(name=TASK_NAME, pass_context=True)
    async def spawn_true(context: procrastinate.JobContext) -> None:
        proc = await asyncio.create_subprocess_exec(TRUE)
        _emit(f"S {context.job.id} {time.time()!r}")
        await proc.wait()
        _emit(f"E {context.job.id} {time.time()!r}")

    return app, spawn_true


# --------------------------------------------------------------------------- worker process


async def _worker_main(args: argparse.Namespace) -> None:
    # procrastinate's docs: for short jobs, size the pool at concurrency (+1); the
    # LISTEN connection is separate and not counted in the pool.
    app, _ = _make_app(args.dsn, pool_size=args.concurrency + 1)
    async with app.open_async():
        await app.run_worker_async(
            name=f"bench-{args.index}",
            concurrency=args.concurrency,
            listen_notify=args.listen_notify,
            fetch_job_polling_interval=args.polling_interval,
            install_signal_handlers=True,  # SIGTERM -> graceful stop
        )


# --------------------------------------------------------------------------- measuring side


class _Tracker:
    """Collects the S(pawned)/E(nded) lines the workers print."""

    def __init__(self) -> None:
        self.spawned: dict[int, float] = {}
        self.ended: dict[int, float] = {}
        self.by_worker: Counter[int] = Counter()
        self._pending: set[int] = set()
        self._all_ended = asyncio.Event()

    def on_line(self, worker: int, line: str) -> None:
        kind, job_id, ts = line.split()
        jid = int(job_id)
        if kind == "S":
            self.spawned[jid] = float(ts)
            self.by_worker[worker] += 1
        elif kind == "E":
            self.ended[jid] = float(ts)
            self._pending.discard(jid)
            if not self._pending:
                self._all_ended.set()

    async def wait_ended(self, ids: list[int], timeout: float) -> None:
        self._pending = {i for i in ids if i not in self.ended}
        self._all_ended = asyncio.Event()
        if not self._pending:
            return
        await asyncio.wait_for(self._all_ended.wait(), timeout)


async def _read_worker(worker: int, stream: asyncio.StreamReader, tracker: _Tracker) -> None:
    while line := await stream.readline():
        text = line.decode().strip()
        if text:
            tracker.on_line(worker, text)


async def _start_worker(
    dsn: str, index: int, concurrency: int, listen_notify: bool, polling_interval: float
) -> asyncio.subprocess.Process:
    # Import this file as a module (not __main__) in the child, so procrastinate
    # does not warn about an App defined in __main__ (task names are explicit).
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    argv = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {bench_dir!r}); import peer_procrastinate as m; m.cli()",
        "--worker",
        "--dsn",
        dsn,
        "--index",
        str(index),
        "--concurrency",
        str(concurrency),
        "--polling-interval",
        str(polling_interval),
    ]
    if not listen_notify:
        argv.append("--no-listen-notify")
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)


async def _wait_registered(
    dsn: str, procs: list[asyncio.subprocess.Process], timeout: float = 30.0
) -> None:
    workers = len(procs)
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            dead = [p.returncode for p in procs if p.returncode is not None]
            if dead:
                raise RuntimeError(f"a worker process exited with status {dead[0]}")
            cur = await conn.execute("SELECT count(*) FROM procrastinate_workers")
            row = await cur.fetchone()
            if row and row[0] >= workers:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {row[0] if row else 0}/{workers} workers registered")
            await asyncio.sleep(0.05)


async def _wait_succeeded(dsn: str, ids: list[int], timeout: float) -> float:
    """Poll until every job in ids is 'succeeded'; return time.time() when seen."""
    lo, hi = min(ids), max(ids)
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs"
                " WHERE id BETWEEN %s AND %s AND status = 'succeeded'",
                (lo, hi),
            )
            row = await cur.fetchone()
            if row and row[0] >= len(ids):
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0] if row else 0}/{len(ids)} jobs succeeded")
            await asyncio.sleep(0.002)


async def _measure_latency(
    task: Any, tracker: _Tracker, rate: float, duration: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration))
    committed: dict[int, float] = {}
    defer_s: list[float] = []
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        t_call = time.time()
        jid = await task.defer_async()
        t_done = time.time()
        committed[jid] = t_done
        defer_s.append(t_done - t_call)

    await asyncio.gather(*(one(i) for i in range(n)))
    ids = list(committed)
    await tracker.wait_ended(ids, timeout=60.0)
    samples = [tracker.spawned[j] - committed[j] for j in ids]
    first, last = min(committed.values()), max(committed.values())
    out: dict[str, Any] = {
        "offered_rate": rate,
        "achieved_rate": round((n - 1) / (last - first), 2) if n > 1 and last > first else rate,
        **summarize_ms(samples),
        "defer_p50_ms": summarize_ms(defer_s)["p50_ms"],
        "defer_p99_ms": summarize_ms(defer_s)["p99_ms"],
    }
    return out


async def _measure_throughput(
    task: Any,
    tracker: _Tracker,
    dsn: str,
    items: int,
    worker_pids: list[int],
) -> dict[str, Any]:
    cpu_before = _cpu_seconds(worker_pids)
    before = Counter(tracker.by_worker)
    t_call = time.time()
    ids = await task.batch_defer_async(*({} for _ in range(items)))
    t_committed = time.time()
    await tracker.wait_ended(ids, timeout=600.0)
    t_done = await _wait_succeeded(dsn, ids, timeout=60.0)
    cpu_after = _cpu_seconds(worker_pids)
    elapsed = t_done - t_committed
    spawns = sorted(tracker.spawned[j] for j in ids)
    per_worker = tracker.by_worker - before
    out: dict[str, Any] = {
        "items": items,
        "jobs_per_s": round(items / elapsed, 1),
        "seconds": round(elapsed, 3),
        "batch_defer_ms": round((t_committed - t_call) * 1000, 1),
        # steady state: spawn rate between the first and last spawn
        "spawn_rate_per_s": round((len(spawns) - 1) / (spawns[-1] - spawns[0]), 1)
        if len(spawns) > 1 and spawns[-1] > spawns[0]
        else float("nan"),
        "jobs_per_worker": [per_worker.get(i, 0) for i in range(len(worker_pids))],
    }
    if cpu_before is not None and cpu_after is not None:
        out["worker_cpu_ms_per_job"] = round((cpu_after - cpu_before) * 1000 / items, 3)
    return out


def _cpu_seconds(pids: list[int]) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _rss_mib(pids: list[int]) -> list[float] | None:
    try:
        import psutil
    except ImportError:
        return None
    out = []
    for pid in pids:
        try:
            out.append(round(psutil.Process(pid).memory_info().rss / 2**20, 1))
        except psutil.Error:
            out.append(float("nan"))
    return out


async def _stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 15.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


async def measure_procrastinate(
    pg_dsn: str = DEFAULT_PG_DSN,
    *,
    rate: float = 50.0,
    duration: float = 10.0,
    throughput_items: int = 2000,
    workers: int = 1,
    concurrency: int = DEFAULT_CONCURRENCY,
    listen_notify: bool = DEFAULT_LISTEN_NOTIFY,
    polling_interval: float = DEFAULT_POLLING_INTERVAL,
    warmup_items: int | None = None,
) -> dict[str, Any]:
    """One repetition of the peer measurement in a fresh, dropped-afterwards database.

    ``workers`` worker processes, each with ``concurrency`` sub-workers. Returns
    ``{"peer", "version", "workers", "concurrency", ..., "latency": {...},
    "throughput": {...}}``; latencies in ms, throughput in jobs/s.
    """
    foreign = ForeignCpu()
    async with fresh_database(pg_dsn, prefix="bench_procrastinate") as dsn:
        app, task = _make_app(dsn, pool_size=4)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            tracker = _Tracker()
            procs = [
                await _start_worker(dsn, i, concurrency, listen_notify, polling_interval)
                for i in range(workers)
            ]
            readers = [
                asyncio.create_task(_read_worker(i, p.stdout, tracker))
                for i, p in enumerate(procs)
                if p.stdout is not None
            ]
            pids = [p.pid for p in procs]
            try:
                await _wait_registered(dsn, procs)
                # Warm up: imports, pool connections, LISTEN, the first fork.
                warm = warmup_items or 4 * concurrency * workers
                warm_ids = await task.batch_defer_async(*({} for _ in range(warm)))
                await tracker.wait_ended(warm_ids, timeout=120.0)
                await _wait_succeeded(dsn, warm_ids, timeout=60.0)
                await asyncio.sleep(0.5)

                foreign.start()
                latency = await _measure_latency(task, tracker, rate, duration)
                await asyncio.sleep(0.5)
                throughput = await _measure_throughput(task, tracker, dsn, throughput_items, pids)
                rss = _rss_mib(pids)
                foreign_percent = foreign.stop(own_pids=pids)
            finally:
                await _stop_workers(procs)
                for r in readers:
                    r.cancel()
                await asyncio.gather(*readers, return_exceptions=True)

    figures: dict[str, Any] = {
        "peer": "procrastinate",
        "version": procrastinate.__version__,
        "workers": workers,
        "concurrency": concurrency,
        "listen_notify": listen_notify,
        "polling_interval_s": polling_interval,
        # CPU share (of all cores) other processes used while this repetition
        # measured; anything else on the 2 cores skews the figures.
        "foreign_cpu_percent": foreign_percent,
        "latency": latency,
        "throughput": throughput,
    }
    if rss is not None:
        figures["worker_rss_mib"] = rss
    return figures


# --------------------------------------------------------------------------- script


def _rows(label: str, f: dict[str, Any]) -> list[tuple[Any, ...]]:
    lat, thr = f["latency"], f["throughput"]
    return [
        (f"{label} dispatch latency p50 (ms)", lat["p50_ms"]),
        (f"{label} dispatch latency p99 (ms)", lat["p99_ms"]),
        (f"{label} dispatch latency max (ms)", lat["max_ms"]),
        (f"{label} throughput (jobs/s)", thr["jobs_per_s"]),
        (f"{label} worker CPU per job (ms)", thr.get("worker_cpu_ms_per_job", float("nan"))),
    ]


async def _repeat(args: argparse.Namespace, workers: int, result: Result) -> list[dict[str, Any]]:
    """``args.runs`` repetitions; one disturbed by other processes is done again.

    A repetition counts as disturbed when other processes used at least
    ``--quiet-threshold`` % of the CPU while it measured; up to
    ``--max-retries`` of them are replaced. All are kept in the JSON.
    """
    kept: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    while len(kept) < args.runs:
        busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
        note = (
            f" (machine busy: {busy}% CPU in use elsewhere)" if busy >= args.quiet_threshold else ""
        )
        attempt = len(kept) + len(disturbed) + 1
        print(f"procrastinate: workers={workers} repetition {attempt} ...{note}", flush=True)
        f = await measure_procrastinate(
            args.dsn,
            rate=args.rate,
            duration=args.duration,
            throughput_items=args.items,
            workers=workers,
            concurrency=args.concurrency,
            listen_notify=args.listen_notify,
            polling_interval=args.polling_interval,
        )
        lat, thr = f["latency"], f["throughput"]
        foreign = f["foreign_cpu_percent"]
        bad = foreign >= args.quiet_threshold and len(disturbed) < args.max_retries
        print(
            f"  latency p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms"
            f" max {lat['max_ms']} ms; throughput {thr['jobs_per_s']} jobs/s"
            f" (per worker {thr['jobs_per_worker']}); other processes used {foreign}% CPU"
            + (" -> disturbed, repeating" if bad else ""),
            flush=True,
        )
        f["disturbed"] = bad
        (disturbed if bad else kept).append(f)
        result.runs.append(f)
    if any(k["foreign_cpu_percent"] >= args.quiet_threshold for k in kept):
        result.notes.append(f"workers={workers}: some kept repetitions ran on a busy machine")
    return kept


async def _main(args: argparse.Namespace) -> int:
    worker_counts = [int(w) for w in args.workers.split(",")]
    result = Result(
        name="peer_procrastinate",
        params={
            "dsn": _redact(args.dsn),
            "rate": args.rate,
            "duration": args.duration,
            "throughput_items": args.items,
            "workers": worker_counts,
            "concurrency": args.concurrency,
            "listen_notify": args.listen_notify,
            "polling_interval_s": args.polling_interval,
            "runs": args.runs,
            "quiet_threshold_percent": args.quiet_threshold,
            "max_retries": args.max_retries,
            "procrastinate": procrastinate.__version__,
        },
    )
    rows: list[tuple[Any, ...]] = []
    for w in worker_counts:
        kept = await _repeat(args, w, result)
        med = median_of_runs(kept)
        result.figures[f"workers_{w}"] = med
        rows += _rows(f"{w}w", med)
    print_table(
        f"procrastinate {procrastinate.__version__}, median of {args.runs} runs "
        f"(rate {args.rate:g}/s x {args.duration:g} s; {args.items} items; "
        f"concurrency {args.concurrency}/worker)",
        ["figure", "value"],
        rows,
    )
    path = result.write()
    print(f"\nwrote {path}")
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", default=DEFAULT_PG_DSN, help="base PostgreSQL DSN")
    p.add_argument("--rate", type=float, default=50.0, help="offered rate, jobs/s")
    p.add_argument("--duration", type=float, default=10.0, help="latency phase, seconds")
    p.add_argument("--items", type=int, default=2000, help="throughput phase, jobs")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--polling-interval", type=float, default=DEFAULT_POLLING_INTERVAL)
    p.add_argument("--no-listen-notify", dest="listen_notify", action="store_false")
    p.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=15.0,
        help="before each repetition wait until other processes use less than this %% CPU",
    )
    p.add_argument("--quiet-timeout", type=float, default=120.0, help="seconds to wait for quiet")
    p.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="repeat up to this many repetitions that other processes disturbed",
    )
    # internal: run one worker process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _redact(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)  # type: ignore[arg-type]


def cli(argv: list[str] | None = None) -> int:
    ns = _parse(argv)
    if ns.worker:
        asyncio.run(_worker_main(ns))
        return 0
    return asyncio.run(_main(ns))


if __name__ == "__main__":
    # Run from the importable module, not __main__ (see _start_worker).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peer_procrastinate

    sys.exit(peer_procrastinate.cli())
