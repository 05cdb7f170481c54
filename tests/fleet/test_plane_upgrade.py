"""The control plane processes upgrade themselves, one at a time: two real `corral start`
processes on one PostgreSQL, a wheel of corral made in the test. A good version moves
both, never both down at once, with no run killed; one whose smoke check fails swaps
back on the first process and the rollout stops there. A process outside the control
plane version window is refused at start."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import __version__
from corral.store import NewItem, Run, TriggerKind, open_store
from corral.views import iso_time
from tests.fleet.fleetkit import clean_env, wait_for
from tests.fleet.wheels import build_wheel
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

NEW = "0.1.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Plane:
    """`corral start --headless --port PORT` (a fixed port: the same after a re-exec)."""

    def __init__(self, root: Path, store_url: str, log: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.log = log
        full = clean_env(root.parent) | {"CORRAL_STATE_URL": store_url, **env}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "start", "--headless", "--port", str(self.port)],
                cwd=root,
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict[str, Any] | None:
        try:
            answer = httpx.get(f"{self.url}/health", timeout=1.0)
        except httpx.HTTPError:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Watch:
    """Samples both gateways' /health every 0.1 s, in a thread: (time, versions), a
    version None while that process does not answer."""

    def __init__(self, planes: list[Plane]) -> None:
        self.planes = planes
        self.samples: list[tuple[float, list[str | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            seen = [(p.health() or {}).get("version") for p in self.planes]
            self.samples.append((time.monotonic(), seen))


class Load:
    """Queues a run of ``work`` every ``every`` seconds, through the store, in a thread."""

    def __init__(self, store_url: str, every: float = 0.5) -> None:
        self.store_url, self.every = store_url, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        async def enqueue() -> None:
            async with await open_store(self.store_url) as store:
                await store.enqueue(NewItem(agent="work", trigger=TriggerKind.MANUAL))

        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):
                asyncio.run(enqueue())


def _runs(store_url: str) -> list[Run]:
    async def read() -> list[Run]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=1000)

    return asyncio.run(read())


def _cli(root: Path, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=root,
        env=clean_env(root.parent) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _rollout(root: Path, store_url: str) -> dict[str, Any]:
    done = _cli(root, store_url, "fleet", "upgrade", "status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@contextlib.contextmanager
def two_planes(tmp_path: Path, store_url: str) -> Iterator[tuple[Path, list[Plane], Path]]:
    root, done = tmp_path / "project", tmp_path / "done"
    done.mkdir()
    command = f'echo "start $CORRAL_RUN_ID"; sleep 2; touch {done}/$CORRAL_RUN_ID; echo done'
    write_project(root, {"work": {"command": ["/bin/sh", "-c", command], "scale": 4}})
    env = {"CORRAL_UPGRADE_START_TIMEOUT": "90"}
    planes = [Plane(root, store_url, tmp_path / f"plane{n}.log", env) for n in (1, 2)]
    try:
        for plane in planes:
            wait_for(lambda p=plane: p.health() is not None, 90)  # type: ignore[misc]
        yield root, planes, done
    finally:
        for plane in planes:
            plane.stop()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_two_control_plane_processes_upgrade_one_at_a_time_with_no_run_killed(
    tmp_path: Path, store_url: str
) -> None:
    wheel = build_wheel(NEW, tmp_path / "wheels")
    with two_planes(tmp_path, store_url) as (root, planes, done), Watch(planes) as watch:
        pids = [p.proc.pid for p in planes]
        with Load(store_url):
            wait_for(lambda: any(done.iterdir()), 60)
            args = ["fleet", "upgrade", "--to", NEW, "--wheel", str(wheel), "--control-plane"]
            started = _cli(root, store_url, *args)
            assert started.returncode == 0, started.stderr
            wait_for(
                lambda: (_rollout(root, store_url)["controlPlane"] or {}).get("state") == "done",
                240,
                interval=1,
            )
        rollout = _rollout(root, store_url)
        planes_done = rollout["controlPlane"]["done"]
        keys = {key.rsplit(":", 1)[1] for key in planes_done}
        assert keys == {str(pid) for pid in pids}, rollout["controlPlane"]
        assert all(entry["from"] == __version__ for entry in planes_done.values())
        for plane in planes:  # the same processes, re-executed into the new version
            assert plane.proc.poll() is None
            assert (plane.health() or {}).get("version") == NEW
            assert f"corral {NEW} is healthy" in plane.output()
        # the queued runs end on the upgraded processes
        wait_for(lambda: all(r.state.is_terminal for r in _runs(store_url)), 60)
    # from outside: each process was down a while (it restarted), never both at once
    seen = [versions for _, versions in watch.samples]
    assert not [v for v in seen if v[0] is None and v[1] is None], "both were down at once"
    for n in (0, 1):
        assert any(v[n] is None for v in seen[1:]), f"process {n + 1} never restarted"
        assert any(v[n] == NEW for v in seen)
    # one at a time: the first to come back on the new version came back before the
    # second went down
    first_down = [next(i for i, v in enumerate(seen) if v[n] is None) for n in (0, 1)]
    first, second = sorted((0, 1), key=lambda n: first_down[n])
    back = next(i for i, v in enumerate(seen) if v[first] == NEW)
    assert back < first_down[second]
    runs = _runs(store_url)
    ended = [r for r in runs if r.state.is_terminal]
    bad = [(r.id, r.state.value, r.error) for r in ended if r.state.value != "succeeded"]
    assert not bad, bad  # no run killed
    assert {r.id for r in ended} <= {p.name for p in done.iterdir()}
    assert len(ended) >= 4


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_turn_its_dead_holder_left_lapses_and_the_others_go_on(
    tmp_path: Path, store_url: str
) -> None:
    wheel = build_wheel(NEW, tmp_path / "wheels")
    source = {
        "wheel": str(wheel),
        "name": wheel.name,
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
    }
    with two_planes(tmp_path, store_url) as (root, planes, _done):

        async def create() -> float:
            async with await open_store(store_url) as store:
                # the state a process leaves that took the turn and died (kill -9)
                until = store.now() + timedelta(seconds=8)
                turn = {"id": "gone-host:999999", "at": iso_time(store.now())}
                turn["until"] = iso_time(until)
                planes = {"state": "running", "turn": turn, "done": {}, "log": []}
                detail = {"steps": [], "runners": {}, "onWorse": "halt", "log": []}
                await store.create_fleet_rollout(
                    target=NEW,
                    channel="stable",
                    canary=1,
                    batch_share=0.25,
                    watch_seconds=2.0,
                    source=source,
                    detail={**detail, "planes": planes},
                    actor="test",
                )
                return time.monotonic() + (until - store.now()).total_seconds()

        lapses = asyncio.run(create())
        time.sleep(max(0.0, lapses - time.monotonic() - 1.5))
        for plane in planes:  # nobody moved while the turn held
            assert "upgrading the control plane" not in plane.output()
        wait_for(
            lambda: (_rollout(root, store_url)["controlPlane"] or {}).get("state") == "done",
            240,
            interval=1,
        )
        planes_log = [e["note"] for e in _rollout(root, store_url)["controlPlane"]["log"]]
        assert "the turn of gone-host:999999 lapsed" in planes_log, planes_log
        for plane in planes:
            assert (plane.health() or {}).get("version") == NEW


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_control_plane_version_whose_check_fails_swaps_back_on_the_first_and_halts(
    tmp_path: Path, store_url: str
) -> None:
    broken = {"runner/probe.py": ('print(f"corral probe ok', 'raise SystemExit(f"broken probe')}
    wheel = build_wheel(NEW, tmp_path / "wheels", patch=broken)
    with two_planes(tmp_path, store_url) as (root, planes, _done):
        args = ["fleet", "upgrade", "--to", NEW, "--wheel", str(wheel), "--control-plane"]
        started = _cli(root, store_url, *args)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _rollout(root, store_url)["state"] == "failed", 180, interval=1)
        rollout = _rollout(root, store_url)
        failed = rollout["controlPlane"]["failed"]
        assert failed["stage"] == "smoke", failed
        assert "probe run ended failed" in failed["error"], failed
        assert rollout["controlPlane"]["done"] == {}
        tried = [p for p in planes if str(p.proc.pid) == failed["id"].rsplit(":", 1)[1]]
        assert len(tried) == 1
        # both serve the old version again; the other one was never told
        for plane in planes:
            wait_for(lambda p=plane: (p.health() or {}).get("version") == __version__, 60)  # type: ignore[misc]
            assert plane.proc.poll() is None
        assert "swapping back" in tried[0].output()
        other = next(p for p in planes if p is not tried[0])
        assert "upgrading the control plane" not in other.output()
        time.sleep(3)  # a few more ticks: nobody takes a turn after the failure
        assert _rollout(root, store_url)["controlPlane"]["turn"] is None
        assert "upgrading the control plane" not in other.output()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_control_plane_version_that_does_not_install_stops_the_rollout(
    tmp_path: Path, store_url: str
) -> None:
    # a wheel named 0.1.1 whose corral says it is 0.1.2: the install refuses it
    made = build_wheel("0.1.2", tmp_path / "wheels")
    wheel = made.rename(made.with_name(f"corral-{NEW}-py3-none-any.whl"))
    with two_planes(tmp_path, store_url) as (root, planes, _done):
        args = ["fleet", "upgrade", "--to", NEW, "--wheel", str(wheel), "--control-plane"]
        started = _cli(root, store_url, *args)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: _rollout(root, store_url)["state"] == "failed", 120, interval=1)
        failed = _rollout(root, store_url)["controlPlane"]["failed"]
        assert failed["stage"] == "install", failed
        assert "says it is version '0.1.2'" in failed["error"], failed
        for plane in planes:  # neither restarted; both serve the old version
            assert plane.proc.poll() is None
            assert (plane.health() or {}).get("version") == __version__
            assert "restarting into it" not in plane.output()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_control_plane_outside_the_version_window_is_refused(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "project"
    write_project(root, {"work": {"command": "true"}})
    env = clean_env(tmp_path) | {
        "CORRAL_STATE_URL": store_url,
        "CORRAL_CONTROL_PLANE_VERSIONS": "99.0,",
    }
    done = subprocess.run(
        [sys.executable, "-m", "corral", "start", "--headless", "--port", str(_free_port())],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    said = done.stderr + done.stdout
    assert f"corral {__version__}, outside the control plane versions" in said, said
    assert "99.0 and later" in said, said


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _end(pid: int) -> None:
    """Stop a process this test did not start itself (the old version the guard became)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not _pid_alive(pid), 60)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_control_plane_version_that_fails_to_start_swaps_back_by_itself(
    tmp_path: Path, store_url: str
) -> None:
    # the new corral exits before it serves anything, let alone runs its smoke check
    broken = {
        "cli/commands/fleet.py": (
            "    project = obj.project()\n    configured",
            '    raise SystemExit("this corral cannot start")\n    configured',
        )
    }
    wheel = build_wheel(NEW, tmp_path / "wheels", patch=broken)
    resumed: list[int] = []
    with two_planes(tmp_path, store_url) as (root, planes, _done):
        try:
            args = ["fleet", "upgrade", "--to", NEW, "--wheel", str(wheel), "--control-plane"]
            started = _cli(root, store_url, *args)
            assert started.returncode == 0, started.stderr
            # the first to take its turn restarts into the new version, which dies
            wait_for(lambda: any(p.proc.poll() is not None for p in planes), 120, interval=0.5)
            [tried] = [p for p in planes if p.proc.poll() is not None]
            other = next(p for p in planes if p is not tried)
            assert "this corral cannot start" in tried.output()
            # its guard becomes the old version: same arguments, same port, another pid
            pidfile = root / ".corral" / "versions" / f"{tried.proc.pid}.pid"
            wait_for(pidfile.is_file, 30)
            resumed.append(int(pidfile.read_text()))
            wait_for(lambda: (tried.health() or {}).get("version") == __version__, 90)
            # which records the failure: the rollout stops there
            wait_for(lambda: _rollout(root, store_url)["state"] == "failed", 60, interval=1)
            rollout = _rollout(root, store_url)
            failed = rollout["controlPlane"]["failed"]
            assert failed["stage"] == "start", failed
            assert failed["version"] == NEW, failed
            assert "exited before it was healthy" in failed["error"], failed
            assert failed["id"].rsplit(":", 1)[1] == str(resumed[0]), failed
            assert rollout["controlPlane"]["state"] == "failed"
            assert rollout["controlPlane"]["done"] == {}
            # the other one was never told, and both serve the old version
            assert other.proc.poll() is None
            assert (other.health() or {}).get("version") == __version__
            time.sleep(3)  # a few more ticks: nobody takes a turn after the failure
            assert _rollout(root, store_url)["controlPlane"]["turn"] is None
            assert "upgrading the control plane" not in other.output()
            assert tried.output().count("upgrading the control plane") == 1
            assert _pid_alive(resumed[0])
            assert (root / ".corral" / "versions" / "current").resolve().name == __version__
        finally:
            for pid in resumed:
                _end(pid)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_halt_while_a_control_plane_process_drains_keeps_it_on_its_version(
    tmp_path: Path, store_url: str
) -> None:
    root, release, done = tmp_path / "project", tmp_path / "release", tmp_path / "done"
    done.mkdir()
    command = (
        f"while [ ! -e {release} ]; do sleep 0.1; done; touch {done}/$CORRAL_RUN_ID; echo done"
    )
    write_project(root, {"work": {"command": ["/bin/sh", "-c", command], "scale": 4}})
    wheel = build_wheel(NEW, tmp_path / "wheels")
    plane = Plane(root, store_url, tmp_path / "plane.log", {})
    try:
        wait_for(lambda: plane.health() is not None, 90)
        asyncio.run(_enqueue(store_url))
        wait_for(lambda: any(r.state.value == "running" for r in _runs(store_url)), 60)
        args = ["fleet", "upgrade", "--to", NEW, "--wheel", str(wheel), "--control-plane"]
        started = _cli(root, store_url, *args)
        assert started.returncode == 0, started.stderr
        # its turn: installed, it drains the run it has (which waits for the release)
        wait_for(lambda: "draining 1 run(s)" in plane.output(), 90)
        assert (plane.health() or {}).get("draining") is True
        halted = _cli(root, store_url, "fleet", "upgrade", "halt")
        assert halted.returncode == 0, halted.stderr
        time.sleep(2.5)  # a few ticks: it sees the halt
        # it goes on serving, on its version, taking new work, its run never killed
        release.touch()
        asyncio.run(_enqueue(store_url))
        wait_for(lambda: len(list(done.iterdir())) == 2, 60)
        wait_for(lambda: all(r.state.is_terminal for r in _runs(store_url)), 30)
        assert {r.state.value for r in _runs(store_url)} == {"succeeded"}
        time.sleep(2)  # a few more ticks: no restart after the run ended
        assert plane.proc.poll() is None
        health = plane.health() or {}
        assert health.get("version") == __version__ and health.get("draining") is False
        assert "restarting into it" not in plane.output()
        assert (root / ".corral" / "versions" / "current").resolve().name == __version__
        assert "it takes work again on corral" in plane.output()
        rollout = _rollout(root, store_url)
        assert rollout["state"] == "halted"
        assert rollout["controlPlane"]["turn"] is None
        notes = [e["note"] for e in rollout["controlPlane"]["log"]]
        assert any("gave its turn up: the rollout is halted" in n for n in notes), notes
    finally:
        plane.stop()


async def _enqueue(store_url: str) -> None:
    async with await open_store(store_url) as store:
        await store.enqueue(NewItem(agent="work", trigger=TriggerKind.MANUAL))
