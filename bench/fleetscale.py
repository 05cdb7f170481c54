"""Fleet autoscale benchmark: from a queued burst to runners serving it, with a real
`corral start` whose fleet autoscaler (``[fleet.autoscale] provider = "local"``) starts
real `corral runner` processes on this host.

    .venv/bin/python bench/fleetscale.py                  # both stores, 2 repetitions
    .venv/bin/python bench/fleetscale.py --stores postgresql --reps 3 --burst 16

Each repetition: a fresh store and control plane, no runner at all; ``--burst`` runs of
one agent (``runsOn = ["auto"]``, each ``date +%s.%N`` into a file named after its item,
then ``sleep --seconds``) are queued at once (``POST /control/runs``); the autoscaler
(reactive, min 0, max ``--max`` runners of ``--slots`` slots, stabilisation 5 s) grows
the fleet. Measured from the wall-clock time before the first POST:

* ``first_run_s``: to the first run executing on a runner it started (its stamp);
* ``all_joined_s``: to every runner it started having joined (the store's members);
* ``all_done_s``: to the last run ended;
* ``drained_s``: from the last run ended to every runner stopped (stabilisation
  window, drain, SIGTERM; expect a little over 5 s).

Figures are medians over ``--reps``; the JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Result, median_of_runs, print_table
from bench.fleet import _agent, control_plane, store_url

from corral.store import FLEET, RunState, open_store


def _project(root: Path, out: Path, args: argparse.Namespace) -> None:
    root.mkdir(parents=True)
    (root / "config.toml").write_text(
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n\n"
        '[fleet.autoscale]\nprovider = "local"\nmin = 0\n'
        f'max = {args.max}\nslotsPerRunner = {args.slots}\nlabels = ["auto"]\n'
        "stabilization = 5\njoinTimeout = 120\n"
    )
    command = f'date +%s.%N > "{out}/$CORRAL_ITEM_ID"; sleep {args.seconds:g}'
    lines = ['runsOn = ["auto"]', f"scale = {args.burst}"]
    _agent(root, "work", ["/bin/sh", "-c", command], lines)


async def _state(url: str) -> dict[str, Any]:
    async with await open_store(url) as store:
        return {
            "members": await store.fleet_members(),
            "runs": await store.list_runs(limit=1000),
            "decisions": await store.pool_decisions(FLEET, limit=1000),
        }


async def one(store: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fleetscale-") as tmp:
        base = Path(tmp)
        out = base / "out"
        out.mkdir()
        root = base / "project"
        _project(root, out, args)
        async with store_url(store, base) as url, control_plane(root, base, url) as plane:
            t0 = time.time()
            async with httpx.AsyncClient(timeout=60) as http:
                for _ in range(args.burst):
                    made = await http.post(
                        f"{plane.url}/control/runs", json={"agent": "work"}, headers=plane.auth()
                    )
                    made.raise_for_status()
            joined_at = done_at = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                seen = await _state(url)
                active = [m for m in seen["members"] if m.state in ("active", "draining")]
                ended = [m for m in seen["members"] if m.state in ("stopped", "failed")]
                if (
                    joined_at is None
                    and seen["members"]
                    and len(active) + len(ended) == len(seen["members"])
                ):
                    joined_at = time.time()
                runs = seen["runs"]
                if done_at is None and len(runs) == args.burst and all(r.ended_at for r in runs):
                    done_at = max(r.ended_at.timestamp() for r in runs if r.ended_at)
                if done_at is not None and seen["members"] and len(ended) == len(seen["members"]):
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the burst was not served and drained in 300 s")
            stopped_at = time.time()
            stamps = [float(p.read_text()) for p in out.iterdir()]
            succeeded = sum(r.state is RunState.SUCCEEDED for r in runs)
            peak = max((int(d.inputs.get("runners", 0)) for d in seen["decisions"]), default=0)
    assert joined_at is not None and done_at is not None
    return {
        "first_run_s": round(min(stamps) - t0, 3),
        "all_joined_s": round(joined_at - t0, 3),
        "all_done_s": round(done_at - t0, 3),
        "drained_s": round(stopped_at - done_at, 3),
        "runners_started": float(len(seen["members"])),
        "peak_runners": float(peak),
        "succeeded": float(succeeded),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    params = dict(vars(args))
    result = Result("fleetscale", params=params)
    rows = []
    for store in args.stores:
        reps = []
        for _ in range(args.reps):
            figures = await one(store, args)
            print(store, json.dumps(figures), flush=True)
            reps.append(figures)
        result.runs += [{"store": store, **r} for r in reps]
        merged = median_of_runs(reps)
        result.figures[store] = merged
        rows.append([store, *(merged[k] for k in reps[0])])
    print_table("from a queued burst to runners serving it", ["store", *reps[0]], rows)
    print(f"written to {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
