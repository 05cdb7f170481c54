"""Adaptive vs fixed backoff for corral's git-native board (D101).

    python bench/gitboard_backoff.py CLAIMERS TASKS REPS [MODE,MODE...]

For each repetition, interleaved, each mode runs CLAIMERS processes claiming and
completing TASKS independent tasks on a fresh local bare repository. Prints one JSON line
per run: mode, seconds, pushes, rejected share, claim latency p50/p99 (s).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "adaptive+yield": (0.02, 0.5, 1),
    "adaptive": (0.02, 0.5, 0),
    "fixed-0.02": (0.02, 0.02, 0),
    "fixed-0.5": (0.5, 0.5, 0),
}

WORKER = r"""
import json, sys, time
from corral.tasks.gitboard import GitBoard
remote, name, cache, base, base_max, polite = sys.argv[1:7]
b = GitBoard(remote, name, cache=cache, base=float(base), base_max=float(base_max),
             yield_after_win=polite == "1")
print("ready", flush=True); sys.stdin.readline()
lat = []
while True:
    t = time.monotonic(); got = b.claim(); lat.append(time.monotonic() - t)
    if got is None: lat.pop(); break
    b.complete(got.task.id, generation=got.generation)
print(json.dumps({"lat": lat, "pushes": b.pushes, "rej": b.rejections}), flush=True)
"""


def one(mode: str, claimers: int, tasks: int) -> dict[str, object]:
    from corral.tasks import TaskSpec
    from corral.tasks.gitboard import GitBoard

    base, base_max, polite = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        remote = Path(tmp) / "r.git"
        subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
        GitBoard(str(remote), "setup", cache=Path(tmp) / "cs").init(
            [TaskSpec(id=f"T-{i:04d}", project="p", title="t") for i in range(tasks)]
        )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    str(remote),
                    f"c{i}",
                    f"{tmp}/c{i}",
                    str(base),
                    str(base_max),
                    str(polite),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(claimers)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        start = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        secs = time.monotonic() - start
    lat = sorted(x for o in outs for x in o["lat"])
    pushes = sum(o["pushes"] for o in outs)
    rej = sum(o["rej"] for o in outs)
    return {
        "mode": mode,
        "claimers": claimers,
        "tasks": tasks,
        "claims": len(lat),
        "seconds": round(secs, 1),
        "pushes": pushes,
        "rejected": round(rej / pushes, 3),
        "p50": round(statistics.median(lat), 2),
        "p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
    }


def main() -> None:
    claimers, tasks, reps = (int(a) for a in sys.argv[1:4])
    modes = sys.argv[4].split(",") if len(sys.argv) > 4 else list(MODES)
    for _ in range(reps):
        for mode in modes:
            print(json.dumps(one(mode, claimers, tasks)), flush=True)


if __name__ == "__main__":
    main()
