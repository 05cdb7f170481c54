"""Provider rate limits: a fleet of agents sharing one provider key's budget.

A fake provider over real HTTP (tests/llm/ratelimited.py) allows ``--rate`` requests per
``--period`` seconds (a token bucket of ``--capacity`` requests, as providers run them)
and answers HTTP 429 with ``retry-after-ms`` otherwise. ``--agents`` agents each start
``--runs`` runs at once; a run is ``--turns`` model requests through the built-in
harness's model path (``ModelChain`` over the Anthropic client, the conversation growing
turn by turn; the tools are not run). Two fleets do the same work:

* ``shared``: every request asks the store's shared bucket first (``GatedClient``,
  ``[providers.anthropic]`` set to ``--configured`` times the provider's rate) and waits
  out 429s;
* ``ungated``: no ``[providers]`` table, as before: a 429 opens the model's breaker and,
  with no other model, fails the run (exit 12).

Figures (medians over ``--reps``): wall time from the start (every run's client made) to
the last answer,
the ideal schedule (total requests / the provider's rate), the overhead over it, the
runs that failed, the provider's 429s and the largest and smallest share an agent got.
Target: zero failed runs and <= 10% over the ideal.

.venv/bin/python bench/ratelimits.py [--reps 3] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Result, fresh_schema, median, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.llm.ratelimited import RateLimitedProvider

from corral.llm import AnthropicClient, Message, Text, ToolResult, ToolUse
from corral.llm.fallback import ChainEntry, ModelChain
from corral.llm.ratelimit import GatedClient
from corral.llm.types import LLMClient
from corral.store import BucketLimits, Store, open_store

BUCKET = "anthropic:bench"


async def one_run(client: LLMClient, turns: int) -> bool:
    """One run's conversation; False when it failed."""
    chain = ModelChain([ChainEntry("m", "claude-bench", client)])
    messages = [Message("user", [Text("do the task")])]
    try:
        for _ in range(turns):
            completion, _name = await chain.complete("", messages, [], 64)
            messages.append(Message("assistant", list(completion.content)))
            calls = [b for b in completion.content if isinstance(b, ToolUse)]
            messages.append(
                Message("user", [ToolResult(c.id, "ok") for c in calls] or [Text("go on")])
            )
        return True
    except Exception:
        return False
    finally:
        await client.aclose()


async def fleet(args: argparse.Namespace, store: Store | None) -> dict[str, Any]:
    per_second = args.rate / args.period
    limits = BucketLimits(
        requests_per_second=per_second * args.configured, burst=1, window=args.period
    )
    total = args.agents * args.runs * args.turns
    async with RateLimitedProvider(
        args.rate, args.period, capacity=args.capacity, turns=args.turns
    ) as fake:

        def client(agent: int, run: int) -> LLMClient:
            inner = AnthropicClient(fake.url, "key")
            if store is None:
                return inner
            return GatedClient(
                inner,
                store,
                BUCKET,
                "anthropic",
                limits,
                waiter=f"a{agent}-r{run}",
                agent=f"a{agent}",
            )

        # The clients (an HTTP connection pool each) are made before the clock starts.
        clients = [client(a, r) for a in range(args.agents) for r in range(args.runs)]
        started = time.monotonic()
        outcomes = await asyncio.gather(*(one_run(c, args.turns) for c in clients))
        wall = time.monotonic() - started
    shares = await store.provider_shares(BUCKET) if store is not None else {}
    ideal = total / per_second
    return {
        "wall_s": wall,
        "ideal_s": ideal,
        "over_ideal_pct": (wall / ideal - 1) * 100,
        "failed_runs": sum(1 for ok in outcomes if not ok),
        "runs": len(outcomes),
        "requests_answered": fake.granted,
        "provider_429s": fake.refused,
        "largest_share": max(shares.values(), default=0),
        "smallest_share": min(shares.values(), default=0),
    }


async def measure(args: argparse.Namespace, dialect: str) -> dict[str, Any]:
    async def once() -> dict[str, Any]:
        if dialect == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                async with await open_store(f"sqlite:///{Path(tmp) / 'state.db'}") as store:
                    return await fleet(args, store)
        async with fresh_schema() as url, await open_store(url) as store:
            return await fleet(args, store)

    return await once()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=60, help="requests the provider allows")
    parser.add_argument("--period", type=float, default=10.0, help="... per this many seconds")
    parser.add_argument("--capacity", type=float, default=2.0, help="the provider's burst")
    parser.add_argument("--configured", type=float, default=1.0, help="our limit / theirs")
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3, help="runs per agent, all at once")
    parser.add_argument("--turns", type=int, default=4, help="model requests per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    result = Result("ratelimits", vars(args))
    rows = []
    baseline = [await fleet(args, None) for _ in range(args.reps)]
    result.runs.append({"fleet": "ungated", "reps": baseline})
    for dialect in args.stores.split(","):
        reps = [await measure(args, dialect) for _ in range(args.reps)]
        result.runs.append({"fleet": f"shared ({dialect})", "reps": reps})
    for entry in result.runs:
        reps = entry["reps"]
        figures = {key: median(r[key] for r in reps) for key in reps[0]}
        figures["failed_runs_max"] = max(r["failed_runs"] for r in reps)
        result.figures[entry["fleet"]] = figures
        rows.append(
            [
                entry["fleet"],
                figures["wall_s"],
                figures["ideal_s"],
                figures["over_ideal_pct"],
                figures["failed_runs_max"],
                figures["runs"],
                figures["provider_429s"],
                f"{figures['smallest_share']:.0f}-{figures['largest_share']:.0f}",
            ]
        )
    print_table(
        f"{args.agents} agents x {args.runs} runs x {args.turns} requests; provider "
        f"{args.rate:g} per {args.period:g} s (medians of {args.reps})",
        ["fleet", "wall s", "ideal s", "over %", "failed (max)", "runs", "429s", "shares"],
        rows,
    )
    print(f"\nwritten to {result.write()}")


if __name__ == "__main__":
    asyncio.run(main())
