"""Time from `corral fleet upgrade` to a three-runner fleet all on the new version, with a
10 s watch window per step (canary, then batches of 25%: three steps), while runs are
queued all along; and the runs delayed (queued while the upgrade ran and started later
than the median wait before it) and killed (any run not succeeded).

Real processes: a `corral start` control plane on PostgreSQL (a schema of its own), three
`corral runner start` processes, a corral wheel of another version made from this tree.

    .venv/bin/python bench/fleet_upgrade.py [--repeat N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import PG_BASE_URL, _pg_admin, with_search_path  # noqa: E402
from tests.fleet.fleetkit import wait_for  # noqa: E402
from tests.fleet.test_upgrade import Load, _read, _rollout, _upgrade, _versions, fleet  # noqa: E402
from tests.fleet.wheels import build_wheel  # noqa: E402

from corral import __version__  # noqa: E402


def once(version: str, watch: str) -> dict[str, object]:
    schema = f"corral_bench_upgrade_{int(time.time() * 1000)}"
    _pg_admin(f'CREATE SCHEMA "{schema}"')
    store_url = with_search_path(PG_BASE_URL, schema)
    try:
        with tempfile.TemporaryDirectory(prefix="corral-upgrade-bench-") as where:
            tmp = Path(where)
            wheel = build_wheel(version, tmp / "wheels")
            with fleet(tmp, store_url) as (plane, _runners, done):
                with Load(plane, every=0.7):
                    wait_for(lambda: len(list(done.iterdir())) >= 3, 60)
                    began = time.monotonic()
                    started = _upgrade(
                        plane, store_url, "--to", version, "--wheel", str(wheel), "--watch", watch
                    )
                    assert started.returncode == 0, started.stderr
                    wait_for(lambda: set(_versions(store_url).values()) == {version}, 600, 0.2)
                    upgraded = time.monotonic() - began
                    wait_for(lambda: _rollout(plane, store_url)["state"] == "completed", 60, 0.5)
                    completed = time.monotonic() - began
                wait_for(lambda: all(r.state.is_terminal for r in _read(store_url)[0]), 120)
                runs = _read(store_url)[0]
        waits = [
            (r.started_at - r.created_at).total_seconds() for r in runs if r.started_at is not None
        ]
        usual = statistics.median(waits) if waits else 0.0
        killed = [r.id for r in runs if r.state.value != "succeeded"]
        return {
            "secondsToAllUpgraded": round(upgraded, 2),
            "secondsToRolloutCompleted": round(completed, 2),
            "runs": len(runs),
            "runsKilled": len(killed),
            "runsDelayed": sum(1 for w in waits if w > usual + 2.0),
            "medianStartWaitSeconds": round(usual, 3),
            "maxStartWaitSeconds": round(max(waits), 3) if waits else None,
        }
    finally:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--watch", default="10s")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = [once("0.1.1", args.watch) for _ in range(args.repeat)]
    for number, found in enumerate(rounds, 1):
        print(f"round {number}: {found}")
    result = {
        "from": __version__,
        "to": "0.1.1",
        "runners": 3,
        "watch": args.watch,
        "rounds": rounds,
        "median": {
            key: statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]
            for key in ("secondsToAllUpgraded", "secondsToRolloutCompleted", "runsKilled")
        },
    }
    print(json.dumps(result["median"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
