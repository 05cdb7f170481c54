"""Fleet membership under load: simulated runners join and heartbeat against one real
`corral start` (SQLite or PostgreSQL), and the control plane's CPU is read from /proc.

    .venv/bin/python bench/fleet_membership.py [--runners 1000] [--seconds 20] [--store both]

Each simulated runner is a lightweight client: it joins once with its own activation
token, then heartbeats every ``--interval`` seconds (5, as a runner does), spread evenly.
Reported: the time to join (p50/p99), the heartbeat latency (p50/p99) at the offered
rate, the control plane's CPU over the heartbeat window (user+system of the `corral
start` process and its threads, from /proc/<pid>/stat) as a share of one core, and that
CPU per heartbeat (the control plane's idle CPU, measured for 5 s before, subtracted).
Bounded: at most ``--runners`` clients, ``--seconds`` of heartbeats.
The client is httpx on one event loop; when it cannot offer the full rate on a loaded
machine, the achieved rate is reported and the CPU per heartbeat is what extrapolates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import DEFAULT_PG_DSN, Result, fresh_database, print_table, summarize_ms

_TICKS = os.sysconf("SC_CLK_TCK")
_IDLE_SECONDS = 5.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _project(root: Path, runners: int) -> None:
    (root / "agents" / "dev").mkdir(parents=True)
    (root / "config.toml").write_text(
        f"maxRunners = {runners + 10}\n[fleet]\nheartbeatSeconds = 5\nofflineAfterSeconds = 15\n"
    )
    (root / "agents" / "dev" / "SKILL.md").write_text("---\nname: dev\n---\n# dev\n")
    (root / "agents" / "dev" / "config.toml").write_text('[harness]\ncommand = "true"\n')


async def _measure(store_url: str, runners: int, seconds: float, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-fleet-bench-") as tmp:
        root = Path(tmp) / "project"
        _project(root, runners)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update({"CORRAL_STATE_URL": store_url, "HOME": tmp})
        log = Path(tmp) / "start.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "start", "--headless", "--port", "0"],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = await _started(log, proc)
            operator = (root / ".corral" / "operator-token").read_text().strip()
            return await _load(url, operator, proc.pid, runners, seconds, interval)
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


async def _started(log: Path, proc: subprocess.Popen[bytes]) -> str:
    for _ in range(1200):
        found = re.search(r"gateway on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace"))
        await asyncio.sleep(0.1)
    raise RuntimeError("corral start did not start in 120 s")


async def _load(
    url: str, operator: str, pid: int, runners: int, seconds: float, interval: float
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        auth = {"Authorization": f"Bearer {operator}"}
        tokens = []
        for _ in range(runners):
            made = await http.post(f"{url}/control/fleet/tokens", json={}, headers=auth)
            made.raise_for_status()
            tokens.append(made.json()["token"])
        joins: list[float] = []
        credentials: list[str] = []
        gate = asyncio.Semaphore(16)

        async def join(i: int) -> None:
            body = {"token": tokens[i], "name": f"sim{i}", "hostname": f"sim{i}", "version": "0"}
            async with gate:
                started = time.perf_counter()
                answer = await http.post(f"{url}/fleet/v1/join", json=body)
                joins.append(time.perf_counter() - started)
            answer.raise_for_status()
            credentials.append(answer.json()["credential"])

        await asyncio.gather(*(join(i) for i in range(runners)))
        # the control plane's own idle cost (its supervisor ticks), to subtract
        idle_from = _cpu_seconds(pid)
        await asyncio.sleep(_IDLE_SECONDS)
        idle_rate = (_cpu_seconds(pid) - idle_from) / _IDLE_SECONDS
        beats: list[float] = []
        failures = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        cpu_before = _cpu_seconds(pid)

        async def runner(i: int) -> None:
            nonlocal failures
            headers = {"Authorization": f"Bearer {credentials[i]}"}
            at = start + interval * i / runners
            while at < start + seconds:
                await asyncio.sleep(max(0.0, at - loop.time()))
                sent = time.perf_counter()
                try:
                    answer = await http.post(
                        f"{url}/fleet/v1/heartbeat", json={"version": "0"}, headers=headers
                    )
                except httpx.TransportError:  # a connection closed under the client
                    failures += 1
                else:
                    beats.append(time.perf_counter() - sent)
                    failures += answer.status_code != 200
                at += interval

        await asyncio.gather(*(runner(i) for i in range(runners)))
        elapsed = loop.time() - start
        cpu = _cpu_seconds(pid) - cpu_before
    offered = runners / interval
    achieved = len(beats) / elapsed
    per_beat_ms = 1000 * max(0.0, cpu - idle_rate * elapsed) / max(1, len(beats))
    return {
        "runners": runners,
        "join_ms": summarize_ms(joins),
        "heartbeat_ms": summarize_ms(beats),
        "heartbeats": len(beats),
        "failures": failures,
        "offered_per_s": round(offered, 1),
        "achieved_per_s": round(achieved, 1),
        "cpu_share_of_core": round(cpu / elapsed, 3),
        "idle_share_of_core": round(idle_rate, 3),
        "cpu_ms_per_heartbeat": round(per_beat_ms, 3),
        "cpu_share_at_offered_rate": round(per_beat_ms * offered / 1000, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    if not 1 <= args.runners <= 5000 or not 1 <= args.seconds <= 300:
        parser.error("--runners 1..5000, --seconds 1..300")
    result = Result("fleet_membership", params=vars(args))
    rows = []
    for store in ("sqlite", "postgresql") if args.store == "both" else (args.store,):
        if store == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{tmp}/state.db"
                figures = await _measure(url, args.runners, args.seconds, args.interval)
        else:
            async with fresh_database(DEFAULT_PG_DSN, prefix="fleetbench") as url:
                figures = await _measure(url, args.runners, args.seconds, args.interval)
        result.figures[store] = figures
        rows.append(
            [
                store,
                figures["runners"],
                figures["join_ms"]["p50_ms"],
                figures["join_ms"]["p99_ms"],
                figures["heartbeat_ms"]["p50_ms"],
                figures["heartbeat_ms"]["p99_ms"],
                figures["achieved_per_s"],
                figures["cpu_share_of_core"],
                figures["idle_share_of_core"],
                figures["cpu_ms_per_heartbeat"],
                figures["cpu_share_at_offered_rate"],
                figures["failures"],
            ]
        )
    print_table(
        "fleet membership: joins and heartbeats against one corral start",
        ["store", "runners", "join p50 ms", "join p99 ms", "beat p50 ms", "beat p99 ms",
         "beats/s", "cpu/core", "idle/core", "cpu ms/beat", "cpu at 1/interval", "failed"],
        rows,
    )  # fmt: skip
    print(f"written to {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
