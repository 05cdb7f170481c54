"""Spawn benchmark: how long a run's process takes to start inside its cgroup.

Two ways, alternately, in one process: straight inside the cgroup (clone3 with
CLONE_INTO_CGROUP, `corral.runtime._direct`) and through the stub that writes its pid
into ``cgroup.procs`` (``CORRAL_SPAWN_DIRECT=0``). Each start is `start_process` with a
new run containment, as a host run's process gets: from before the call to the moment
the program (``date +%s.%N``, the first program of the run) has written the time, and to
its exit. ``--gap`` seconds between starts (default 0.3 s: runs that start one at a
time, where a move on cgroup2 without favordynmods waits for an RCU grace period);
``--gap 0`` back to back. Medians of the paired samples and their ratio.

    .venv/bin/python bench/spawn.py               # 60 pairs, 0.3 s apart
    .venv/bin/python bench/spawn.py --n 20 --gap 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import Result, print_table, summarize_ms

from corral.runtime._contain import contain_support
from corral.runtime._direct import OFF_ENV, direct_status
from corral.runtime.host import contain_for, start_process


async def one(way: str, tmp: Path) -> tuple[float, float]:
    """(to exec, to exit) in seconds for one start ``way`` ("direct" or "stub")."""
    if way == "stub":
        os.environ[OFF_ENV] = "0"
    else:
        os.environ.pop(OFF_ENV, None)
    env = {"PATH": "/usr/bin:/bin", "CORRAL_RUN_ID": f"bench-{uuid.uuid4().hex[:12]}"}
    containment = contain_for(env, make=False)
    began = time.time()
    proc = await start_process(
        ["date", "+%s.%N"], cwd=tmp, env=env, stdin=None, containment=containment,
        before=containment.make,
    )  # fmt: skip
    out, _ = await proc.communicate()
    ended = time.time()
    await containment.kill()
    return float(out) - began, ended - began


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="pairs of starts (60)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between starts")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/results/)")
    args = parser.parse_args()
    support = contain_support()
    ready, how = direct_status()
    if support.kind != "cgroup2" or not ready:
        print(f"nothing to compare here: {support.describe()}; {how}", file=sys.stderr)
        return 2
    samples: dict[str, list[tuple[float, float]]] = {"direct": [], "stub": []}
    with tempfile.TemporaryDirectory(prefix="corral-spawn-bench-") as tmp:
        for i in range(args.n + 3):
            for way in ("direct", "stub") if i % 2 == 0 else ("stub", "direct"):
                sample = await one(way, Path(tmp))
                if i >= 3:  # warm-up first
                    samples[way].append(sample)
                await asyncio.sleep(args.gap)
    os.environ.pop(OFF_ENV, None)
    figures: dict[str, Any] = {}
    rows = []
    for way, got in samples.items():
        figures[way] = {
            "to_exec_ms": summarize_ms([s[0] for s in got]),
            "to_exit_ms": summarize_ms([s[1] for s in got]),
        }
    ratios = [d[0] / s[0] for d, s in zip(samples["direct"], samples["stub"], strict=True)]
    figures["direct_over_stub_to_exec_median_of_pairs"] = round(statistics.median(ratios), 3)
    for way in ("stub", "direct"):
        f = figures[way]
        rows.append(
            [way, f["to_exec_ms"]["p50_ms"], f["to_exec_ms"]["p99_ms"], f["to_exit_ms"]["p50_ms"]]
        )
    result = Result("spawn", params={"n": args.n, "gap": args.gap})
    result.figures.update(figures)
    pair_ratio = figures["direct_over_stub_to_exec_median_of_pairs"]
    print_table(
        f"a run's process started inside its cgroup ({args.n} pairs, {args.gap:g} s apart); "
        f"direct/stub to exec, median of pairs: {pair_ratio}",
        ["way", "to exec p50 ms", "p99 ms", "to exit p50 ms"],
        rows,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        print(f"written to {args.out}")
    else:
        print(f"written to {result.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
