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
  with no other model, fails the run (exit 12);
* ``runner`` (``--runner``): as ``shared``, but every run is a run claimed by a runner
  and asks through the control plane's runner API (``RemoteLedger`` over HTTP to an
  in-process gateway and scheduler on the same store, D127), as the built-in harness on
  a runner host does: the runner API hop (and its owner/fence check) on every ask.

Figures (medians over ``--reps``): wall time from the start (every run's client made) to
the last answer,
the ideal schedule (total requests / the provider's rate), the overhead over it, the
runs that failed, the provider's 429s and the largest and smallest share an agent got.
Target: zero failed runs and <= 10% over the ideal.

.venv/bin/python bench/ratelimits.py [--reps 3] [--stores sqlite,postgresql] [--runner]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from _common import Result, fresh_schema, median, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.llm.ratelimited import RateLimitedProvider
from tests.scheduler.helpers import write_project

from corral.gateway.app import create_app
from corral.gateway.server import GatewayServer, bind
from corral.llm import AnthropicClient, Message, Text, ToolResult, ToolUse
from corral.llm.fallback import ChainEntry, ModelChain
from corral.llm.ratelimit import GatedClient, Permits, bucket_for
from corral.llm.types import LLMClient
from corral.project import load_project
from corral.runner.agent import ControlClient, RemoteLedger
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import BucketLimits, NewItem, Store, TriggerKind, open_store

#: A provider key's bucket id, as the runner API requires it.
BUCKET = bucket_for("anthropic", "bench", "key")


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


OPERATOR = "bench-operator-token"


@contextlib.asynccontextmanager
async def control_plane(root: Path, store: Store) -> AsyncIterator[str]:
    """The control plane's gateway (its runner API) over ``store``, in this process; its
    scheduler is started (registered, the project synced) but dispatches nothing: the
    runs are the runner's."""
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    scheduler = Scheduler(load_project(root), store, SchedulerOptions(), gateway_url=url)
    await scheduler.start()
    server = GatewayServer.for_app(create_app(scheduler, OPERATOR))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield url
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def runner_permits(
    args: argparse.Namespace, store: Store, workdir: Path
) -> AsyncIterator[list[tuple[str, str, Permits]]]:
    """A control plane (its gateway, in this process) on ``store``, a runner
    joined to it, and every run claimed by that runner: (run id, agent, its
    ``RemoteLedger``) for each."""
    agents: dict[str, dict[str, object]] = {
        f"a{a}": {"command": "true", "runsOn": ["bench"], "scale": args.runs}
        for a in range(args.agents)
    }
    toml = "[fleet]\nheartbeatSeconds = 60\nofflineAfterSeconds = 3600\n"
    write_project(workdir / "project", agents, toml)
    async with (
        control_plane(workdir / "project", store) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        made = await http.post(
            "/control/fleet/tokens",
            json={"labels": ["bench"]},
            headers={"Authorization": f"Bearer {OPERATOR}"},
        )
        made.raise_for_status()
        body = {"token": made.json()["token"], "name": "bench", "hostname": "bench"}
        joined = (await http.post("/fleet/v1/join", json=body | {"version": "1.0"})).json()
        for agent in agents:
            for _ in range(args.runs):
                await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
        claims = await store.claim(
            joined["runnerId"],
            lease_seconds=3600,
            limit=args.agents * args.runs,
            agents=list(agents),
            runner=True,
        )
        assert len(claims) == args.agents * args.runs, len(claims)
        control = ControlClient([url], joined["credential"])
        try:
            yield [(c.run.id, c.run.agent, RemoteLedger(control, c.run)) for c in claims]
        finally:
            await control.close()


async def fleet(
    args: argparse.Namespace, store: Store | None, workdir: Path | None = None
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        asking: list[tuple[str, str, Permits]] = []
        if store is not None:
            asking = [
                (f"a{a}-r{r}", f"a{a}", store) for a in range(args.agents) for r in range(args.runs)
            ]
            if workdir is not None:
                asking = await stack.enter_async_context(runner_permits(args, store, workdir))
        return await _fleet(args, store, asking)


async def _fleet(
    args: argparse.Namespace, store: Store | None, asking: list[tuple[str, str, Permits]]
) -> dict[str, Any]:
    per_second = args.rate / args.period
    limits = BucketLimits(
        requests_per_second=per_second * args.configured, burst=1, window=args.period
    )
    total = args.agents * args.runs * args.turns
    async with RateLimitedProvider(
        args.rate, args.period, capacity=args.capacity, turns=args.turns
    ) as fake:

        def client(waiter: str, agent: str, permits: Permits) -> LLMClient:
            inner = AnthropicClient(fake.url, "key")
            return GatedClient(
                inner, permits, BUCKET, "anthropic", limits, waiter=waiter, agent=agent
            )

        # The clients (an HTTP connection pool each) are made before the clock starts.
        clients: list[LLMClient] = (
            [client(*one) for one in asking]
            if asking
            else [AnthropicClient(fake.url, "key") for _ in range(args.agents * args.runs)]
        )
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


async def measure(args: argparse.Namespace, dialect: str, runner: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) if runner else None
        if dialect == "sqlite":
            async with await open_store(f"sqlite:///{Path(tmp) / 'state.db'}") as store:
                return await fleet(args, store, workdir)
        async with fresh_schema() as url, await open_store(url) as store:
            return await fleet(args, store, workdir)


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
    parser.add_argument(
        "--runner", action="store_true", help="also the runs on a runner (runner API)"
    )
    args = parser.parse_args()
    result = Result("ratelimits", vars(args))
    rows = []
    baseline = [await fleet(args, None) for _ in range(args.reps)]
    result.runs.append({"fleet": "ungated", "reps": baseline})
    for dialect in args.stores.split(","):
        reps = [await measure(args, dialect) for _ in range(args.reps)]
        result.runs.append({"fleet": f"shared ({dialect})", "reps": reps})
        if args.runner:
            reps = [await measure(args, dialect, runner=True) for _ in range(args.reps)]
            result.runs.append({"fleet": f"runner ({dialect})", "reps": reps})
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
