"""Keeping a corral wheel in the store and reading it back (what `corral fleet upgrade
--wheel` and every runner's wheel download cost the store), on SQLite and PostgreSQL
(a schema of its own): medians over N rounds, each of fresh bytes (a real insert).

    .venv/bin/python bench/fleet_wheels.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import fresh_schema  # noqa: E402
from tests.fleet.wheels import build_wheel  # noqa: E402

from corral.store import open_store  # noqa: E402

NAME = "corral-0.1.1-py3-none-any.whl"


async def measure(url: str, data: bytes, rounds: int) -> tuple[float, float]:
    keep, read = [], []
    async with await open_store(url) as store:
        for _ in range(rounds):
            blob = data + secrets.token_bytes(8)
            began = time.perf_counter()
            digest, _ = await store.store_fleet_wheel(blob, name=NAME, version="0.1.1", actor="b")
            keep.append(time.perf_counter() - began)
            began = time.perf_counter()
            assert await store.fleet_wheel(digest) == blob
            read.append(time.perf_counter() - began)
    return statistics.median(keep) * 1000, statistics.median(read) * 1000


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = build_wheel("0.1.1", Path(tmp)).read_bytes()
        print(f"wheel: {len(data) / 1e6:.2f} MB, {rounds} rounds, medians")
        sqlite = await measure(f"sqlite:///{Path(tmp) / 'state.db'}", data, rounds)
        print(f"sqlite      keep {sqlite[0]:7.1f} ms   read {sqlite[1]:7.1f} ms")
    async with fresh_schema(prefix="bench_wheels") as url:
        pg = await measure(url, data, rounds)
    print(f"postgresql  keep {pg[0]:7.1f} ms   read {pg[1]:7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args().rounds))
