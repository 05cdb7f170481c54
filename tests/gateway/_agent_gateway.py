"""A real agent API gateway in its own process, for tests that measure or break it.

    python -m tests.gateway._agent_gateway STORE_URL PROJECT_ROOT

serves ``create_agent_app`` (as `corral run` does, wrapped like `corral start` wraps its
app) on a free loopback port, for one live run of the agent ``dev`` created in the store.
It prints one JSON line, ``{"url", "secret", "run_id", "pid"}``, and serves until SIGTERM
or until its stdin closes. The values in ``$PROTECT`` (a JSON list) are protected for the
run as its credentials' values would be. With ``$FOREIGN`` set, the run's secret is
kept in the store only (not in the process's registry), as for a run another process
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.gateway.app import create_agent_app
from corral.gateway.server import GatewayServer, bind
from corral.project import load_project
from corral.scheduler.agentlink import AgentLink, hash_secret
from corral.scheduler.service import sync_config
from corral.store import NewRun, TriggerKind, open_store


async def main(url: str, root: Path) -> None:
    project = load_project(root)
    async with await open_store(url) as store:
        await sync_config(store, project)
        run = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
        sock = bind("127.0.0.1", 0)
        link = AgentLink(f"http://127.0.0.1:{sock.getsockname()[1]}")
        if os.environ.get("FOREIGN"):  # a run another process started: only the store knows it
            secret = secrets.token_urlsafe(32)
            await store.set_run_secret(run.id, hash_secret(secret))
        else:
            secret, _ = link.issue(run.id, "dev", "manual")
            link.protect(run.id, [secret, *json.loads(os.environ.get("PROTECT", "[]"))])
        server = GatewayServer.for_app(create_agent_app(project, store, link))
        loop = asyncio.get_running_loop()

        def stop() -> None:
            server.should_exit = True

        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_reader(sys.stdin.fileno(), lambda: stop() if not os.read(0, 1024) else None)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        info = {"url": link.gateway_url, "secret": secret, "run_id": run.id, "pid": os.getpid()}
        print(json.dumps(info), flush=True)
        await serving


@dataclass
class AgentGateway:
    """The gateway process, and the run it serves."""

    url: str
    secret: str
    run_id: str
    pid: int
    bin_dir: Path

    def command(
        self, name: str, *args: str, input: bytes = b"", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """The installed in-run command ``name``, run as the served run runs it."""
        env = {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "GATEWAY_URL": self.url,
            "CORRAL_RUN_SECRET": self.secret,
        }
        return subprocess.run(
            [str(self.bin_dir / name), *args],
            input=input,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def peak_rss(self) -> int:
        """The process's peak resident set (VmHWM), in bytes."""
        return _status_kib(self.pid, "VmHWM") * 1024

    def rss(self) -> int:
        return _status_kib(self.pid, "VmRSS") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def agent_gateway(
    store_url: str,
    root: Path,
    bin_dir: Path,
    protect: Sequence[str] = (),
    *,
    foreign: bool = False,
) -> Iterator[AgentGateway]:
    """Start the gateway process for the project at ``root`` (its agent ``dev`` is the
    served run's); stop it afterwards, whatever happened. ``foreign``: the run's secret
    is in the store only, as for a run that another process started."""
    env = {**os.environ, "PROTECT": json.dumps(list(protect))}
    if foreign:
        env["FOREIGN"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway._agent_gateway", store_url, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the gateway process ended (exit {process.wait(10)})")
        info = json.loads(line)
        yield AgentGateway(info["url"], info["secret"], info["run_id"], info["pid"], bin_dir)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
