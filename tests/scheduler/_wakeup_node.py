"""A scheduler with its gateway, in a process of its own, whose polls are slow.

    python _wakeup_node.py <project root> <store url> <poll seconds>

The dispatch poll and the gateway's waiting-request poll are both ``<poll seconds>``, so
anything it does sooner was woken by a change notice. Prints ``ready <gateway url>``,
then one JSON line ``{"item": id, "agent": name, "claimed_ns": t}`` per claim; stops
(draining) when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


async def main(root: Path, url: str, poll: float) -> None:
    import corral.gateway.agent_api._handlers as handlers
    from corral.gateway.app import create_app
    from corral.gateway.server import GatewayServer, bind
    from corral.project import load_project
    from corral.scheduler.service import Scheduler, SchedulerOptions
    from corral.store import Claim, open_store

    setattr(handlers, "POLL_SECONDS", poll)  # noqa: B010 - the waiting requests' fallback poll
    project = load_project(root)
    store = await open_store(url)
    sock = bind("127.0.0.1", 0)
    gateway = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = SchedulerOptions(poll_interval=poll, supervise_every=0.05, drain_grace=5)
    scheduler = Scheduler(project, store, options, gateway_url=gateway)
    scheduler.watcher = None

    def claimed(claim: Claim) -> None:
        line = {"item": claim.item.id, "agent": claim.item.agent, "claimed_ns": time.time_ns()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    scheduler.on_claim = claimed
    await scheduler.start()
    server = GatewayServer.for_app(create_app(scheduler, "operator-token-for-tests"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop, stop))
    print(f"ready {gateway}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await running
    server.should_exit = True
    await serving
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])))
