"""Webhook intake benchmark: signed GitHub deliveries, verified and durably enqueued.

The gateway is served in this process as ``corral start`` serves it: a ``Scheduler``
(started: registered, agents synced; not dispatching, so the queue only fills) over a
fresh store, ``create_app`` on uvicorn/httptools. One agent subscribes to the source's
``issues`` events with a queue bound far above what a run posts, so nothing is dropped.
The load comes from one separate process (aiohttp), so this process's CPU is the
gateway's. Per store and repetition:

* a window of ``--duration`` seconds after ``--warmup``: ``--concurrency`` workers, each
  with its own keep-alive connection, post ``issues`` deliveries (a realistic payload of
  ~``--body-kib`` KiB, 64 distinct ones, signed with HMAC-SHA256 in advance, each with a
  fresh ``X-GitHub-Delivery``) back to back; every answer must be 202 with the receipt id.
  Deliveries/s, and p50/p99 of the response time under that load.
* afterwards, a check that nothing acknowledged is missing: every receipt id a 202 named
  (warm-up included) is in the store as ``accepted`` with one queued item whose trigger
  detail names it.

Figures are medians over ``--reps``. ``--profile`` runs cProfile in the gateway process
during one window and prints the top functions. ``.venv/bin/python bench/webhooks.py
--help``; ``--loadgen`` is the internal entry point of the load-generator process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import hmac
import io
import json
import math
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_PG_DSN,
    Result,
    _cpu_jiffies,
    fresh_database,
    median_of_runs,
    print_table,
    summarize_ms,
    wait_for_quiet,
)

# corral and aiohttp are imported where used: the load generator runs this file too.

PYTHON = sys.executable
AGENT = "triage"
SOURCE = "github"
SECRET = "bench-webhook-signing-secret"
TOKEN = "bench-operator-token"
STORE_ALIASES = {"sqlite": "sqlite", "postgresql": "postgresql", "pg": "postgresql"}
BUSY_OTHERS = 50.0

# --------------------------------------------------------------------------- the payload


def issue_payload(number: int, body_kib: float) -> dict[str, Any]:
    """An ``issues`` ``opened`` delivery shaped like GitHub's (the fields it always sends)."""
    user = {
        "login": f"octocat{number % 7}",
        "id": 583231 + number,
        "node_id": "MDQ6VXNlcjU4MzIzMQ==",
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
        "html_url": "https://github.com/octocat",
        "type": "User",
        "site_admin": False,
    }
    repo = {
        "id": 1296269,
        "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
        "name": "app",
        "full_name": "acme/app",
        "private": False,
        "owner": {**user, "login": "acme", "type": "Organization"},
        "html_url": "https://github.com/acme/app",
        "description": "The app",
        "fork": False,
        "url": "https://api.github.com/repos/acme/app",
        "default_branch": "main",
        "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "pushed_at": "2024-05-01T12:00:00Z",
        "topics": ["python", "agents"],
        "visibility": "public",
    }
    text = "Steps to reproduce: open the app, click the button, watch it fail. "
    issue = {
        "url": f"https://api.github.com/repos/acme/app/issues/{number}",
        "html_url": f"https://github.com/acme/app/issues/{number}",
        "id": 2000000 + number,
        "node_id": "I_kwDOABCDEF",
        "number": number,
        "title": f"The button fails on page {number}",
        "user": user,
        "labels": [
            {"id": 1, "name": "bug", "color": "d73a4a", "default": True},
            {"id": 2, "name": "agent", "color": "0e8a16", "default": False},
        ],
        "state": "open",
        "locked": False,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": 0,
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "closed_at": None,
        "author_association": "MEMBER",
        "body": "",
        "reactions": {"url": "", "total_count": 0, "+1": 0, "-1": 0},
    }
    payload = {
        "action": "opened",
        "issue": issue,
        "repository": repo,
        "organization": {"login": "acme", "id": 1, "url": "https://api.github.com/orgs/acme"},
        "sender": user,
    }
    filler = max(0, int(body_kib * 1024) - len(json.dumps(payload)))
    issue["body"] = (text * (filler // len(text) + 1))[:filler]
    return payload


def signed_bodies(count: int, body_kib: float) -> list[tuple[bytes, str]]:
    out = []
    for n in range(1, count + 1):
        body = json.dumps(issue_payload(n, body_kib)).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        out.append((body, signature))
    return out


# --------------------------------------------------------------------------- the gateway


def write_project(root: Path, state_url: str, queue_size: int) -> None:
    (root / "agents" / AGENT).mkdir(parents=True)
    (root / "config.toml").write_text(
        f'[state]\nurl = "{state_url}"\n\n[webhooks.{SOURCE}]\ntype = "github"\n'
        f'credential = "bench"\n'
    )
    (root / "agents" / AGENT / "SKILL.md").write_text(f"---\nname: {AGENT}\n---\nbench\n")
    (root / "agents" / AGENT / "config.toml").write_text(
        f"scale = 1\nmaxWorkQueueSize = {queue_size}\n"
        '[harness]\ncommand = ["/bin/true"]\n'
        f'[[webhooks]]\nsource = "{SOURCE}"\nevents = ["issues"]\nactions = ["opened"]\n'
    )


@dataclass
class Gateway:
    url: str
    state_url: str


@contextlib.asynccontextmanager
async def state_url_for(store: str, tmp: Path, dsn: str) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp / 'state.db'}"
    else:
        async with fresh_database(dsn, prefix="bench_webhooks") as url:
            yield url


async def prefill(store: Any, depth: int) -> None:
    """Queue ``depth`` manual items for the agent (through the store, as ``corral run``
    queues them), so intake is measured against a deep queue. Eight at a time (the size
    of the PostgreSQL store's pool: more would only wait for a connection, and past its
    wait limit fail with StoreBusy on a busy machine)."""
    from corral.store import NewItem, TriggerKind

    done = 0
    while done < depth:
        step = min(8, depth - done)
        await asyncio.gather(
            *(
                store.enqueue(NewItem(AGENT, TriggerKind.MANUAL, prompt=f"prefill {done + i}"))
                for i in range(step)
            )
        )
        done += step


@contextlib.asynccontextmanager
async def gateway(
    store_kind: str, dsn: str, queue_size: int, depth: int = 0
) -> AsyncIterator[Gateway]:
    """A fresh store and project, a started scheduler, its gateway served on loopback;
    with ``depth``, the agent's queue already holds that many queued items."""
    from corral.credentials import CredentialStore
    from corral.gateway.app import create_app
    from corral.gateway.server import GatewayServer, bind
    from corral.project import load_project
    from corral.scheduler.service import Scheduler
    from corral.store import open_store

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-webhooks-"))
    try:
        async with state_url_for(store_kind, tmp, dsn) as state_url:
            root = tmp / "project"
            write_project(root, state_url, queue_size)
            project = load_project(root)
            credentials = CredentialStore(tmp / "credentials")
            credentials.add("webhook_secret", "bench", {"secret": SECRET})
            store = await open_store(state_url)
            try:
                sock = bind("127.0.0.1", 0)
                url = f"http://127.0.0.1:{sock.getsockname()[1]}"
                scheduler = Scheduler(project, store, gateway_url=url)
                scheduler.executor.credentials = credentials
                await scheduler.start()
                if depth:
                    await prefill(store, depth)
                server = GatewayServer.for_app(create_app(scheduler, TOKEN))
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                try:
                    yield Gateway(url, state_url)
                finally:
                    server.should_exit = True
                    await serving
            finally:
                await store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- CPU and checks


class Profiler:
    """yappi over every thread (the event loop and the SQLite worker) in CPU time when it is
    installed (``pip install yappi``), else cProfile of the event loop's thread only."""

    def __init__(self) -> None:
        try:
            import yappi
        except ImportError:
            self.yappi: Any = None
            self.cprofile: cProfile.Profile | None = cProfile.Profile()
        else:
            self.yappi, self.cprofile = yappi, None

    def start(self) -> None:
        if self.yappi is not None:
            self.yappi.set_clock_type("cpu")
            self.yappi.start(builtins=True)
        elif self.cprofile is not None:
            self.cprofile.enable()

    def stop(self) -> None:
        if self.yappi is not None:
            self.yappi.stop()
        elif self.cprofile is not None:
            self.cprofile.disable()

    def report(self) -> None:
        if self.yappi is not None:
            for thread in self.yappi.get_thread_stats():
                print(f"thread {thread.name} ({thread.id}): {thread.ttot:.2f} s CPU")
            for sort in ("ttot", "tsub"):
                stats = self.yappi.get_func_stats()
                stats.sort(sort, "desc")
                print(f"\nfunctions by {sort} (all threads):")
                for stat in list(stats)[:40]:
                    where = f"{Path(stat.module).name}:{stat.lineno}"
                    print(f"{stat.ttot:8.3f} {stat.tsub:8.3f} {stat.ncall:8d}  {stat.name} {where}")
            self.yappi.clear_stats()
            return
        assert self.cprofile is not None
        for sort in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(self.cprofile, stream=out).sort_stats(sort).print_stats(40)
            print(out.getvalue())


class CpuWindow:
    """CPU between the load generator's "measure" and "done" lines, in % of one core:
    this process (the gateway, all its threads), PostgreSQL's processes, the machine."""

    def __init__(self, store: str, profile: bool) -> None:
        self.peers = ("postgres",) if store == "postgresql" else ()
        self._procs: list[Any] = []
        self._t0 = self._own0 = self._peer0 = 0.0
        self._jiffies0 = (0, 0)
        self.own = self.peer = self.machine = math.nan
        self.profile = profile
        self.profiler: Any = None

    def _peer_cpu(self) -> float:
        total = 0.0
        for p in self._procs:
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def mark(self, phase: str) -> None:
        now, own = time.perf_counter(), time.process_time()
        if phase == "measure":
            if self.peers:
                import psutil

                self._procs = [
                    p for p in psutil.process_iter(["name"]) if p.info["name"] in self.peers
                ]
            self._t0, self._own0, self._peer0 = now, own, self._peer_cpu()
            self._jiffies0 = _cpu_jiffies()
            if self.profile:
                self.profiler = Profiler()
                self.profiler.start()
        elif phase == "done" and self._t0:
            if self.profiler is not None:
                self.profiler.stop()
            wall = now - self._t0
            self.own = round(100 * (own - self._own0) / wall, 1)
            self.peer = round(100 * (self._peer_cpu() - self._peer0) / wall, 1)
            total, idle = (x1 - x0 for x1, x0 in zip(_cpu_jiffies(), self._jiffies0, strict=True))
            busy = (total - idle) / total if total > 0 else math.nan
            self.machine = round(100 * busy * (os.cpu_count() or 1), 1)


def count_durable(state_url: str, receipt_ids: list[str]) -> dict[str, int]:
    """How many of the acknowledged receipts are in the store as accepted, with a queued
    item naming them (read with the bare driver, not the store)."""
    ids = json.dumps(receipt_ids)
    if state_url.startswith("sqlite:///"):
        conn = sqlite3.connect(state_url.removeprefix("sqlite:///"))
        try:
            receipts = conn.execute(
                "SELECT count(*) FROM corral_webhook_receipts WHERE outcome = 'accepted' "
                "AND id IN (SELECT value FROM json_each(?))",
                (ids,),
            ).fetchone()[0]
            items = conn.execute(
                "SELECT count(*) FROM corral_queue WHERE state = 'queued' AND "
                "json_extract(trigger_detail, '$.receiptId') IN (SELECT value FROM json_each(?))",
                (ids,),
            ).fetchone()[0]
            total = conn.execute("SELECT count(*) FROM corral_queue").fetchone()[0]
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(state_url) as pg:
            receipts = pg.execute(
                "SELECT count(*) FROM corral_webhook_receipts WHERE outcome = 'accepted' "
                "AND id = ANY(%s)",
                (receipt_ids,),
            ).fetchone()[0]  # type: ignore[index]
            items = pg.execute(
                "SELECT count(*) FROM corral_queue WHERE state = 'queued' "
                "AND trigger_detail->>'receiptId' = ANY(%s)",
                (receipt_ids,),
            ).fetchone()[0]  # type: ignore[index]
            total = pg.execute("SELECT count(*) FROM corral_queue").fetchone()[0]  # type: ignore[index]
    return {
        "acknowledged": len(receipt_ids),
        "receipts": receipts,
        "items": items,
        "all_items": total,
    }


# --------------------------------------------------------------------------- measurement


async def run_loadgen(
    config: dict[str, Any], on_phase: Callable[[str], None], timeout: float
) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        os.path.abspath(__file__),
        "--loadgen",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=64 * 1024 * 1024,
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
        raise RuntimeError(f"the load generator did not finish within {timeout:.0f} s") from None
    finally:
        await proc.wait()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
    return result


async def measure_store(store: str, args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    """One repetition on one store: a fresh gateway, one loaded window, the durability check."""
    queue_size = 1_000_000
    async with gateway(store, args.dsn, queue_size, args.depth) as gw:
        config = {
            "url": gw.url,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "duration": args.duration,
            "body_kib": args.body_kib,
        }
        cpu = CpuWindow(store, profile)
        res = await run_loadgen(config, cpu.mark, args.warmup + args.duration + 120)
        receipt_ids = res.pop("receipt_ids")
        res["gateway_cpu_percent"] = cpu.own
        if cpu.peers:
            res["postgres_cpu_percent"] = cpu.peer
        res["others_cpu_percent"] = round(
            cpu.machine - cpu.own - cpu.peer - res["client_cpu_percent"], 1
        )
        res["gateway_cpu_ms_per_delivery"] = (
            round(10 * cpu.own / res["deliveries_per_s"], 3) if res["deliveries"] else math.nan
        )
        checked = await asyncio.to_thread(count_durable, gw.state_url, receipt_ids)
        res["lost"] = checked["acknowledged"] - min(checked["receipts"], checked["items"])
        res["acknowledged"] = checked["acknowledged"]
        res["dropped_or_extra"] = checked["all_items"] - checked["items"] - args.depth
        if cpu.profiler is not None:
            cpu.profiler.report()
    return res


# --------------------------------------------------------------------------- load generator
# Runs in its own process (``--loadgen``): stdin is the config, stdout carries the phase
# lines "measure" and "done" as they happen, then "result <json>".


@dataclass
class Tally:
    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)
    receipt_ids: list[str] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


async def _worker(
    i: int, session: Any, bodies: list[tuple[bytes, str]], phase: dict[str, bool], tally: Tally
) -> None:
    n = 0
    pid = os.getpid()
    while not phase["stop"]:
        body, signature = bodies[(i + n) % len(bodies)]
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": f"{pid}-{i}-{n}",
            "X-Hub-Signature-256": signature,
            "User-Agent": "GitHub-Hookshot/bench",
        }
        n += 1
        t0 = time.perf_counter()
        try:
            async with session.post(f"/webhooks/{SOURCE}", data=body, headers=headers) as resp:
                status, data = resp.status, await resp.read()
        except Exception as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)
            continue
        elapsed = time.perf_counter() - t0
        if status != 202:
            tally.error(f"{status} {data[:200]!r}")
            continue
        tally.receipt_ids.append(json.loads(data)["receiptId"])
        if phase["measuring"]:
            tally.deliveries += 1
            tally.latencies.append(elapsed)


async def loadgen(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    bodies = signed_bodies(64, cfg["body_kib"])
    phase = {"measuring": False, "stop": False}
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=cfg["concurrency"])
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(cfg["url"], connector=connector, timeout=timeout) as session:
        workers = [
            asyncio.create_task(_worker(i, session, bodies, phase, tally))
            for i in range(cfg["concurrency"])
        ]
        await asyncio.sleep(cfg["warmup"])
        t0, cpu0 = time.perf_counter(), time.process_time()
        phase["measuring"] = True
        print("measure", flush=True)
        await asyncio.sleep(cfg["duration"])
        phase["measuring"] = False
        t1, cpu1 = time.perf_counter(), time.process_time()
        print("done", flush=True)
        phase["stop"] = True
        await asyncio.gather(*workers)
    seconds = t1 - t0
    lat = summarize_ms(tally.latencies)
    return {
        "concurrency": cfg["concurrency"],
        "body_bytes": len(bodies[0][0]),
        "deliveries_per_s": round(tally.deliveries / seconds, 1),
        "deliveries": tally.deliveries,
        "seconds": round(seconds, 3),
        "p50_ms": lat["p50_ms"],
        "p90_ms": lat["p90_ms"],
        "p99_ms": lat["p99_ms"],
        "max_ms": lat["max_ms"],
        "client_cpu_percent": round(100 * (cpu1 - cpu0) / seconds, 1),
        "errors": tally.errors,
        "error_samples": tally.samples,
        "receipt_ids": tally.receipt_ids,
    }


def loadgen_main() -> int:
    cfg = json.loads(sys.stdin.read())
    result = asyncio.run(loadgen(cfg))
    print("result " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- the script

COLUMNS = [
    ("deliveries/s", "deliveries_per_s"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("gateway CPU", "gateway_cpu_percent"),
    ("CPU ms/delivery", "gateway_cpu_ms_per_delivery"),
    ("server CPU", "postgres_cpu_percent"),
    ("client CPU", "client_cpu_percent"),
    ("others CPU", "others_cpu_percent"),
    ("lost", "lost"),
    ("errors", "errors"),
]


def _brief(f: dict[str, Any]) -> str:
    return (
        f"{f['deliveries_per_s']} deliveries/s, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms"
        f" (gateway {f['gateway_cpu_percent']}% CPU, client {f['client_cpu_percent']}%,"
        f" others {f['others_cpu_percent']}%); acknowledged {f['acknowledged']}, lost"
        f" {f['lost']}, errors {f['errors']}"
    )


async def _main(args: argparse.Namespace) -> int:
    result = Result(
        name="webhooks",
        params={
            k: getattr(args, k)
            for k in (
                "stores",
                "reps",
                "concurrency",
                "warmup",
                "duration",
                "body_kib",
                "quick",
                "depth",
            )
        },
    )
    kept: dict[str, list[dict[str, Any]]] = {s: [] for s in args.stores}
    failures: list[str] = []
    for rep in range(1, args.reps + 1):
        busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
        if busy >= args.quiet_threshold:
            print(f"machine busy: {busy}% CPU used elsewhere; measuring anyway", flush=True)
            result.notes.append(f"repetition {rep} started with {busy}% CPU used elsewhere")
        for store in args.stores:
            print(f"{store}: repetition {rep} ...", flush=True)
            figures = await measure_store(store, args, args.profile and rep == 1)
            print(f"  {_brief(figures)}", flush=True)
            if figures["others_cpu_percent"] > BUSY_OTHERS:
                result.notes.append(
                    f"{store} repetition {rep}: other processes used "
                    f"{figures['others_cpu_percent']}% of a core"
                )
            for key in ("lost", "errors", "dropped_or_extra"):
                if figures[key]:
                    failures.append(f"{store} repetition {rep}: {key} = {figures[key]}")
            result.runs.append({"store": store, "rep": rep, **figures})
            kept[store].append(figures)
    for store, runs in kept.items():
        result.figures[store] = median_of_runs(runs)
        for key in ("lost", "errors", "dropped_or_extra"):
            result.figures[store][key] = sum(r[key] for r in runs)
    print_table(
        f"webhook intake: signed GitHub issues deliveries (~{args.body_kib} KiB), "
        f"{args.concurrency} concurrent clients, verified and durably enqueued"
        f"{f' into a queue of {args.depth}' if args.depth else ''}; median of "
        f"{args.reps} (CPU in % of one core; server = PostgreSQL)",
        ["store", *(h for h, _ in COLUMNS)],
        [[s, *(result.figures[s].get(k, math.nan) for _, k in COLUMNS)] for s in args.stores],
    )
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
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent client connections")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    p.add_argument("--duration", type=float, default=5.0, help="measured window, seconds")
    p.add_argument("--body-kib", type=float, default=6.0, help="payload size, KiB")
    p.add_argument(
        "--depth",
        type=int,
        default=0,
        help="queued items of the agent before measuring (intake against a deep queue)",
    )
    p.add_argument("--profile", action="store_true", help="cProfile the gateway (first rep)")
    p.add_argument("--quick", action="store_true", help="one repetition, short window")
    p.add_argument("--quiet-threshold", type=float, default=15.0)
    p.add_argument("--quiet-timeout", type=float, default=30.0)
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    try:
        ns.stores = [STORE_ALIASES[s.strip()] for s in ns.stores.split(",") if s.strip()]
    except KeyError as exc:
        p.error(f"--stores: unknown store {exc.args[0]!r}")
    if ns.quick:
        ns.reps = 1
        ns.duration = min(ns.duration, 3.0)
    return ns


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.loadgen:
        return loadgen_main()
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
