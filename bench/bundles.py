"""Project bundles: what `corral push` and applying a pushed bundle cost.

A generated project (``--agents`` agents, each a SKILL.md, a config.toml and a 32 KiB
tool file; ``shared/`` with 1 MiB over 16 files) is packed, published to a fresh store
(SQLite, PostgreSQL) and applied by a scheduler that follows the store's head. Per
repetition:

* pack: CPU seconds of ``pack()`` (walk, read, tar, SHA-256 and the per-agent manifest);
* publish: wall time of ``publish_bundle`` (one transaction: the bytes and the head);
* apply: wall time of ``BundleFollower.check`` for a new head (fetch the bytes, verify,
  unpack, load the project, hot reload);
* converge (PostgreSQL only): from publish returning to a second scheduler, on its own
  connection and polling every 30 s, running the bundle: the notice's delivery.

    .venv/bin/python bench/bundles.py [--agents 50] [--reps 5] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_PG_DSN, Result, fresh_schema, median, print_table

from corral.bundles import pack
from corral.project import load_project
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import open_store


def make_project(root: Path, agents: int, version: int) -> None:
    (root / "agents").mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text("")
    shared = root / "shared"
    shared.mkdir(exist_ok=True)
    for n in range(16):
        (shared / f"context-{n}.md").write_bytes(bytes([65 + n % 26]) * (64 << 10))
    for n in range(agents):
        folder = root / "agents" / f"agent-{n:03d}"
        (folder / "tools").mkdir(parents=True, exist_ok=True)
        (folder / "SKILL.md").write_text(f"---\nname: agent-{n:03d}\n---\nversion {version}\n")
        (folder / "config.toml").write_text('scale = 1\n[harness]\ncommand = "true"\n')
        (folder / "tools" / "tool.py").write_bytes(b"# tool\n" * ((32 << 10) // 7))


async def one_store(url: str, work: Path, agents: int, converge: bool) -> dict[str, Any]:
    roots = [work / "cp0", work / "cp1"]
    for root in roots:
        make_project(root, agents, 0)
    source = work / "source"
    make_project(source, agents, 1)
    cpu = time.process_time()
    packed = pack(source)
    pack_s = time.process_time() - cpu
    stores = [await open_store(url) for _ in range(2)]
    try:
        first = Scheduler(load_project(roots[0]), stores[0], SchedulerOptions())
        await first.start()
        second = Scheduler(load_project(roots[1]), stores[1], SchedulerOptions())
        await second.start()
        assert first.bundles is not None and second.bundles is not None
        second.bundles.interval = 30.0
        follow = asyncio.create_task(second.bundles.run())
        await asyncio.sleep(0.3)
        began = time.perf_counter()
        await stores[0].publish_bundle(packed.hash, packed.data, packed.manifest(), actor="b")
        published = time.perf_counter()
        applied = await first.bundles.check()
        applied_at = time.perf_counter()
        assert applied
        if converge:
            while second.project.bundle != packed.hash:
                await asyncio.sleep(0.001)
        converged = time.perf_counter()
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    finally:
        for opened in stores:
            await opened.close()
    figures = {
        "bundle_bytes": packed.size,
        "files": len(packed.entries),
        "pack_cpu_ms": pack_s * 1000,
        "publish_ms": (published - began) * 1000,
        "apply_ms": (applied_at - published) * 1000,
    }
    if converge:
        figures["converge_ms"] = (converged - published) * 1000
    return figures


_COLUMNS = ("bundle_bytes", "files", "pack_cpu_ms", "publish_ms", "apply_ms", "converge_ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--dsn", default=DEFAULT_PG_DSN)
    args = parser.parse_args()
    result = Result("bundles", params={"agents": args.agents, "reps": args.reps})
    rows = []
    for store in args.stores.split(","):
        runs = []
        for _ in range(args.reps):
            work = Path(tempfile.mkdtemp(prefix="corral-bench-bundles-"))
            try:
                if store == "sqlite":
                    url = f"sqlite:///{work / 'state.db'}"
                    runs.append(await one_store(url, work, args.agents, False))
                else:
                    async with fresh_schema(args.dsn) as url:
                        runs.append(await one_store(url, work, args.agents, True))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        figures = {key: median(run[key] for run in runs) for key in runs[0]}
        result.figures[store] = figures
        result.runs.extend({"store": store} | run for run in runs)
        rows.append([store, *(figures.get(key, "-") for key in _COLUMNS)])
    title = f"bundles: {args.agents} agents, medians of {args.reps}"
    print_table(title, ["store", *_COLUMNS], rows)
    print(f"written to {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
