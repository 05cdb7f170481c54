"""How the rollout rule behaves (D119): false rollbacks of an equal canary, and how many
canary runs it takes to roll back a worse one, by simulation of the pure rule.

    python bench/rollout_rule.py [--trials N] [--json PATH]

Runs end one at a time, each the canary's with probability SHARE; the rule
(corral.rollouts.judge: min_runs 20, alpha 0.05 spent over checkpoints at 20, 40, 80,
160 canary runs, minimum effects 10 points / 1.2x) is applied after every 5th canary
run, as the evaluator applies it on its tick, up to 300 canary runs. Costs are
log-normal (sigma 0.6), the canary's scaled by its cost ratio. Prints, per scenario: the
share of trials rolled back, and the median and 90th percentile of canary runs at the
rollback.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

from corral.rollouts import Rule, judge

SHARE = 0.25
MAX_CANARY = 300
SCENARIOS = [
    # name, baseline failure rate, canary failure rate, canary cost ratio
    ("equal (5% fail, 1.0x cost)", 0.05, 0.05, 1.0),
    ("equal, higher base (20%)", 0.20, 0.20, 1.0),
    ("fails 15% vs 5%", 0.05, 0.15, 1.0),
    ("fails 30% vs 5%", 0.05, 0.30, 1.0),
    ("fails 80% vs 0%", 0.0, 0.80, 1.0),
    ("costs 1.1x", 0.05, 0.05, 1.1),
    ("costs 1.5x", 0.05, 0.05, 1.5),
    ("costs 2x", 0.05, 0.05, 2.0),
]


def trial(rng: random.Random, base_p: float, can_p: float, ratio: float) -> int | None:
    """Canary runs at the rollback, or None (never rolled back)."""
    rule = Rule(min_runs=20)
    ends: dict[str, list[tuple[int, bool, float]]] = {"b": [], "c": []}
    for tick in range(10 * MAX_CANARY):
        side = "c" if rng.random() < SHARE else "b"
        p, scale = (can_p, ratio) if side == "c" else (base_p, 1.0)
        ends[side].append((tick, rng.random() < p, scale * 0.01 * math.exp(rng.gauss(0, 0.6))))
        if side == "c" and len(ends["c"]) % 5 == 0:
            if judge(rule, ends["b"], ends["c"]).action == "rollback":
                return len(ends["c"])
            if len(ends["c"]) >= MAX_CANARY:
                return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = random.Random(20261207)
    results = []
    started = time.perf_counter()
    for name, base_p, can_p, ratio in SCENARIOS:
        ends = [trial(rng, base_p, can_p, ratio) for _ in range(args.trials)]
        hit = sorted(e for e in ends if e is not None)
        row = {
            "scenario": name,
            "trials": args.trials,
            "rolledBack": len(hit) / args.trials,
            "canaryRunsMedian": statistics.median(hit) if hit else None,
            "canaryRunsP90": hit[int(0.9 * (len(hit) - 1))] if hit else None,
        }
        results.append(row)
        print(
            f"{name:30s} rolled back {row['rolledBack']:6.1%}  canary runs at rollback: "
            f"median {row['canaryRunsMedian']}, p90 {row['canaryRunsP90']}"
        )
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"share": SHARE, "maxCanary": MAX_CANARY, "results": results}, out)


if __name__ == "__main__":
    main()
