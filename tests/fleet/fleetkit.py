"""A real fleet for tests: a `corral start` control plane and `corral runner start`
processes (on this host, or inside simulated hosts), each with a HOME and config of its
own; and what the tests count: live run processes, from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.bundles import pack
from tests.hosts import Host
from tests.processes import wait_until
from tests.scheduler.procs import SchedulerProcess


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral")})
    return env


@dataclass
class Plane:
    """A control plane: its gateway URL (as this namespace reaches it) and port."""

    root: Path
    url: str
    port: int
    operator: str
    process: SchedulerProcess

    def control(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.operator}"}
        return httpx.request(method, f"{self.url}/control{path}", headers=headers, timeout=30, **kw)

    def push(self) -> str:
        packed = pack(self.root)
        done = httpx.post(
            f"{self.url}/control/bundles",
            content=packed.data,
            headers={
                "Authorization": f"Bearer {self.operator}",
                "Content-Type": "application/x-tar",
            },
            timeout=60,
        )
        assert done.status_code == 200, done.text
        return packed.hash

    def token(self, labels: list[str]) -> str:
        made = self.control("POST", "/fleet/tokens", json={"labels": labels})
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    def trigger(self, agent: str) -> None:
        done = self.control("POST", "/runs", json={"agent": agent})
        assert done.status_code in (200, 201, 202), done.text


#: The lease of runs on runners in these tests (``CORRAL_FLEET_LEASE_SECONDS``): 2/3 of
#: the default 12 s, so a lost run is recovered sooner; the runners adopt it (self-fencing
#: at 7/12 of it, 4.7 s), so every margin keeps its ratio, and the margin between a
#: runner's self-fencing and its lease lapsing (3.3 s) still holds on a loaded machine.
TEST_LEASE = 8.0


class PlaneProcess(SchedulerProcess):
    """`corral start --headless` as ``SchedulerProcess`` starts it, with more environment
    (``CORRAL_FLEET_LEASE_SECONDS``)."""

    def __init__(
        self, project: Path, store_url: str, log: Path, *extra: str, env: dict[str, str]
    ) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        full.update({"CORRAL_STATE_URL": store_url, "HOME": str(project.parent), **env})
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "start", "--headless", "--port", "0", *extra],
                cwd=project,
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


@contextlib.contextmanager
def control_plane(
    root: Path,
    store_url: str,
    log: Path,
    *extra: str,
    lease: float | None = TEST_LEASE,
    env: dict[str, str] | None = None,
) -> Iterator[Plane]:
    """`corral start` on ``store_url``; with ``--expose`` (listening on every address, so
    simulated hosts reach it), an operator token is made first, as exposing requires.
    ``lease``: the lease of runs on runners (None: the default, 12 s); ``env``: more of
    the control plane's environment."""
    operator = ""
    if "--expose" in extra:
        env = clean_env(root.parent) | {"CORRAL_STATE_URL": store_url}
        made = subprocess.run(
            [sys.executable, "-m", "corral", "token", "create", "fleet-tests"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        operator = made.stdout.strip()
    more = {} if lease is None else {"CORRAL_FLEET_LEASE_SECONDS": f"{lease:g}"}
    with PlaneProcess(root, store_url, log, *extra, env=more | (env or {})) as process:
        wait_until(lambda: "started; gateway on" in process.output(), 90)
        found = re.search(r"gateway on (http://[0-9.]+):(\d+)", process.output())
        assert found is not None, process.output()
        port = int(found.group(2))
        operator = operator or (root / ".corral" / "operator-token").read_text().strip()
        yield Plane(root, f"http://127.0.0.1:{port}", port, operator, process)
        process.stop()


@dataclass
class RunnerProcess:
    name: str
    home: Path
    config: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    runner_id: str = ""
    host: Host | None = field(default=None, repr=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def join_runner(
    plane: Plane,
    base: Path,
    name: str,
    labels: list[str],
    slots: int,
    *,
    host: Host | None = None,
    url: str | None = None,
    drain: float = 1,
) -> RunnerProcess:
    """`corral runner join` (from this namespace, to the URL the runner will use); the
    config gets ``drainSeconds`` = ``drain`` (1 s: a test's runner stops within seconds
    rather than letting its runs finish for the default 60 s)."""
    home = base / f"runner-{name}"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "runner.json"
    token = plane.token(labels)
    argv = [sys.executable, "-m", "corral", "runner", "join", url or plane.url]
    argv += ["--token", token, "--name", name, "--slots", str(slots), "--config", str(config)]
    if host is None:
        done = subprocess.run(argv, env=clean_env(home), capture_output=True, text=True, timeout=60)
    else:
        done = host.run(
            ["env", *[f"{k}={v}" for k, v in clean_env(home).items()], *argv], timeout=60
        )
    assert done.returncode == 0, done.stderr + done.stdout
    written = json.loads(config.read_text())
    config.write_text(json.dumps(written | {"drainSeconds": drain}))
    runner_id = written["runnerId"]
    return RunnerProcess(name, home, config, home / "runner.log", runner_id=runner_id, host=host)


def start_runner(runner: RunnerProcess) -> RunnerProcess:
    argv = [sys.executable, "-m", "corral", "runner", "start", "--config", str(runner.config), "-v"]
    out = runner.log.open("ab")
    env = clean_env(runner.home)
    if runner.host is None:
        runner.proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    else:
        runner.proc = runner.host.popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return runner


def run_processes(marker: str, *, stopped: bool = True) -> dict[str, list[int]]:
    """Live processes whose command line holds ``marker``, by the item they run
    (CORRAL_ITEM_ID in their environment); ``stopped=False`` leaves out the stopped ones
    (SIGSTOP: they execute nothing until continued)."""
    return {
        item: pids
        for item, found in process_states(marker).items()
        if (pids := [pid for pid, state in found if stopped or state not in ("T", "t")])
    }


def process_states(marker: str) -> dict[str, list[tuple[int, str]]]:
    """Like ``run_processes``, with each process's state (/proc/PID/stat: R, S, T, ...).

    A run is counted by its topmost process: a process whose parent also holds the marker
    is a fork of the run's shell (a command substitution, or a child between fork and
    exec, which still shows its parent's command line), not another execution."""
    found: dict[str, list[tuple[int, str]]] = {}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if marker.encode() not in cmdline:
                continue
            state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state == "Z":
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in environ:
            if var.startswith(b"CORRAL_ITEM_ID="):
                item = var.split(b"=", 1)[1].decode()
                found.setdefault(item, []).append((int(entry), state))
                parents[int(entry)] = int(ppid)
    return {
        item: top
        for item, procs in found.items()
        if (top := [(pid, state) for pid, state in procs if parents[pid] not in parents])
    }


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


class Sampler:
    """Samples the live run processes from /proc in a thread, all along, against each
    agent's ``scale`` and the project's cap: a violation is two live processes for one
    item, more live processes of an agent than its scale, or more in all than the cap.
    ``markers``: agent -> the marker in its command line. Stopped processes (a frozen
    host) execute nothing and are counted apart (``stopped_seen``)."""

    def __init__(
        self, markers: dict[str, str], scales: dict[str, int], cap: int, every: float = 0.05
    ) -> None:
        self.markers, self.scales, self.cap, self.every = markers, scales, cap, every
        self.samples = 0
        self.violations: list[str] = []
        self.most: dict[str, int] = dict.fromkeys(markers, 0)
        self.stopped_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every)

    def sample(self) -> None:
        total = 0
        for agent, marker in self.markers.items():
            states = process_states(marker)
            live = {
                item: pids
                for item, found in states.items()
                if (pids := [pid for pid, state in found if state not in ("T", "t")])
            }
            self.stopped_seen += sum(len(found) for found in states.values()) - sum(
                len(pids) for pids in live.values()
            )
            count = sum(len(pids) for pids in live.values())
            total += count
            self.most[agent] = max(self.most[agent], count)
            for item, pids in live.items():
                if len(pids) > 1:
                    self.violations.append(f"item {item}: {len(pids)} live processes {pids}")
            if count > self.scales[agent]:
                self.violations.append(f"{agent}: {count} live > scale {self.scales[agent]}")
        if total > self.cap:
            self.violations.append(f"{total} live run processes > the project's cap {self.cap}")
        self.samples += 1
