"""A process of the shared-bucket test: ``_permit_worker.py STORE_URL PROVIDER_URL AGENT
N RPS`` makes N requests through a GatedClient (prints ready, waits for go, prints one
JSON line: the requests that succeeded, the 429s it saw and the seconds it waited)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.llm import AnthropicClient, Message, Text
from corral.llm.ratelimit import GatedClient
from corral.store import BucketLimits, open_store


async def main(store_url: str, provider_url: str, agent: str, n: int, rps: float) -> None:
    limits = BucketLimits(requests_per_second=rps, burst=1, window=10.0)
    async with await open_store(store_url, migrate=False) as store:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(i: int) -> int:
            client = GatedClient(
                AnthropicClient(provider_url, "key"),
                store,
                "anthropic:shared",
                "anthropic",
                limits,
                waiter=f"{agent}-{i}",
                agent=agent,
            )
            done = 0
            try:
                for _ in range(n // 2):
                    await client.complete("m", "", [Message("user", [Text("hi")])], [], 16)
                    done += 1
            finally:
                await client.aclose()
            return done

        done = await asyncio.gather(one(0), one(1))
    print(json.dumps({"done": sum(done)}), flush=True)


if __name__ == "__main__":
    url, provider, agent, count, rate = sys.argv[1:6]
    asyncio.run(main(url, provider, agent, int(count), float(rate)))
