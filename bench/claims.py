"""Claim throughput: N scheduler processes claiming and finishing from one queue.

Per store (SQLite file, PostgreSQL schema) and per N in ``--procs`` (default 1, 2, 4):
a fresh store with ``--agents`` agents of scale ``--scale`` (no project cap, or
``--cap``), ``--items`` queued items spread evenly over them; then N worker processes,
released together, each loop ``claim(limit=--batch)`` and finalise every claim at once
(no run in between: this measures the store's claim path, not runs), until the queue is
empty; with ``--steps run`` each run also gets its secret and is marked running, which
is the store's whole work per run in a scheduler. Figure: items/s from the release to
the last worker's exit; medians of ``--reps``.

``--src DIR`` runs the workers (and the setup) on another checkout's ``src`` (for
instance ``git archive HEAD src | tar -x -C /tmp/old`` to measure the code before a
change, on the same machine in the same session).

    .venv/bin/python bench/claims.py [--stores sqlite,pg] [--procs 1,2,4] [--reps 3] [--steps run]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_PG_DSN, Result, fresh_schema, median, print_table


async def _worker(url: str, batch: int, steps: str) -> None:
    from corral.store import RunState, open_store

    async with await open_store(url, migrate=False) as store:
        owner = f"bench-{os.getpid()}"
        # Code whose claim stores the runs' secret hashes takes them in the claim; older
        # code sets each run's secret in a write of its own, as its scheduler did.
        in_claim = "secret_hashes" in inspect.signature(store.claim).parameters
        print("ready", flush=True)
        sys.stdin.readline()
        done = 0
        while True:
            hashes = [_hash() for _ in range(batch)] if steps == "run" else []
            extra = {"secret_hashes": hashes} if in_claim and hashes else {}
            claims = await store.claim(owner, lease_seconds=60, limit=batch, **extra)
            if not claims:
                if not any(s.queued for s in await store.agent_states()):
                    break
                await asyncio.sleep(0.001)
                continue
            for i, claim in enumerate(claims):
                if steps == "run":
                    if not in_claim:
                        await store.set_run_secret(claim.run.id, hashes[i])
                    await store.mark_run_running(claim.run.id, pid=os.getpid(), host="bench")
                await store.finalize(
                    claim.run.id,
                    fence=claim.run.fence or 0,
                    state=RunState.SUCCEEDED,
                    exit_code=0,
                )
            done += len(claims)
        print(json.dumps({"done": done}), flush=True)


def _hash() -> str:
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


async def _setup(url: str, args: argparse.Namespace) -> None:
    from corral.store import AgentSpec, NewItem, TriggerKind, open_store

    async with await open_store(url) as store:
        specs = [AgentSpec(f"agent-{n}", args.scale, args.items) for n in range(args.agents)]
        await store.sync_project(specs, scale_cap=args.cap, max_attempts=3, max_reruns=0)
        for n in range(args.items):
            new = NewItem(agent=f"agent-{n % args.agents}", trigger=TriggerKind.WEBHOOK)
            await store.enqueue(new)


async def _measure(url: str, procs: int, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    setup = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--setup", url, *_forward(args), env=env
    )
    assert await setup.wait() == 0
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            url,
            "--batch",
            str(args.batch),
            "--steps",
            args.steps,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(procs)
    ]
    for proc in workers:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
    start = time.perf_counter()
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outs = []
    for proc in workers:
        assert proc.stdout is not None
        outs.append(json.loads(await proc.stdout.readline()))
        await proc.wait()
    elapsed = time.perf_counter() - start
    done = sum(out["done"] for out in outs)
    assert done == args.items, (done, args.items)
    return {"items_per_s": done / elapsed, "seconds": elapsed}


def _forward(args: argparse.Namespace) -> list[str]:
    out = ["--agents", str(args.agents), "--scale", str(args.scale), "--items", str(args.items)]
    if args.cap is not None:
        out += ["--cap", str(args.cap)]
    return out


async def _main(args: argparse.Namespace) -> None:
    if args.worker:
        await _worker(args.worker, args.batch, args.steps)
        return
    if args.setup:
        await _setup(args.setup, args)
        return
    label = args.label or ("src=" + args.src if args.src else "this checkout")
    result = Result("claims", params=vars(args) | {"label": label})
    rows = []
    for store in args.stores.split(","):
        for procs in [int(p) for p in args.procs.split(",")]:
            reps = []
            for _ in range(args.reps):
                if store == "sqlite":
                    with tempfile.TemporaryDirectory() as tmp:
                        reps.append(await _measure(f"sqlite:///{tmp}/bench.db", procs, args))
                else:
                    async with fresh_schema(DEFAULT_PG_DSN, prefix="claims") as url:
                        reps.append(await _measure(url, procs, args))
            rate = median(r["items_per_s"] for r in reps)
            key = f"{store}_{procs}proc_items_per_s"
            result.figures[key] = round(rate, 1)
            result.runs.append({"store": store, "procs": procs, "reps": reps})
            each = " ".join(f"{r['items_per_s']:.0f}" for r in reps)
            rows.append([store, str(procs), f"{rate:.0f}", each])
    title = (
        f"claims ({label}): {args.items} items, {args.agents} agents x scale {args.scale}, "
        f"cap {args.cap}, batch {args.batch}, steps {args.steps}"
    )
    print_table(title, ["store", "procs", "items/s (median)", "reps"], rows)
    print(result.write())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,pg")
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--cap", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--steps",
        choices=("claim", "run"),
        default="claim",
        help="claim: claim and finalise; run: also the run's secret and marking it "
        "running, as a scheduler does for every run",
    )
    parser.add_argument("--src", default=None, help="another checkout's src directory")
    parser.add_argument("--label", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
