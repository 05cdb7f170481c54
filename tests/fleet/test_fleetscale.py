"""The runner fleet sized by ``[fleet.autoscale]``, end to end on both stores: a real
`corral start` control plane whose fleet autoscaler starts real `corral runner`
processes (``local``), or has the project's scripts start them (``command``).

A queue of runs with no runner grows the fleet (never past max), the runs complete on
the new runners, and once the stabilisation window has passed the idle runners are
drained and stopped while a busy one is kept until its run ends; the command provider's
scripts get the URL, a fresh token and the name; a failing start script is recorded
and retried, the control plane carrying on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.engine.fleet_runs import MAX_WAIT
from corral.engine.token import hash_token
from corral.errors import ConfigError
from corral.project import load_project
from corral.scheduler.fleetscale import FleetScaler
from corral.scheduler.service import agent_specs, sync_config
from corral.store import (
    FLEET,
    AgentSpec,
    NewItem,
    NewRun,
    NewRunner,
    Runner,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from tests.fleet.fleetkit import Plane, clean_env, control_plane, wait_for
from tests.gateway.test_metrics import parse, value
from tests.processes import alive
from tests.scheduler.helpers import write_project
from tests.store.conftest import Clock

pytestmark = pytest.mark.slow


def _project(root: Path, autoscale: str) -> None:
    write_project(
        root,
        {
            "quick": {
                "command": ["/bin/sh", "-c", "sleep 2 # fleetscale-mark"],
                "runsOn": ["auto"],
                "scale": 4,
            },
            "long": {
                "command": ["/bin/sh", "-c", "sleep 14 # fleetscale-mark"],
                "runsOn": ["auto"],
                "scale": 1,
            },
        },
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n" + autoscale,
    )


def _read(store_url: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with await open_store(store_url) as store:
            return {
                "members": await store.fleet_members(),
                "runs": await store.list_runs(limit=200),
                "runners": await store.list_runners(),
                "decisions": await store.pool_decisions(FLEET, limit=500),
            }

    return asyncio.run(read())


class Watch:
    """Samples the store in a thread: the most runners live at once, and every (member
    stopped, its runner still running a run) seen."""

    def __init__(self, store_url: str) -> None:
        self.url = store_url
        self.most = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen = _read(self.url)
            live = [m for m in seen["members"] if m.state in ("starting", "active", "draining")]
            self.most = max(self.most, len(live))
            ended = {m.runner_id for m in seen["members"] if m.state == "stopped"}
            for run in seen["runs"]:
                if run.state is RunState.RUNNING and run.runner_id in ended:
                    self.violations.append(f"run {run.id} running on stopped {run.runner_id}")
            time.sleep(0.3)


def _when(store_url: str, test: Any, count: int) -> dict[str, Any] | None:
    """The store's reading once ``count`` members pass ``test``, else None."""
    seen = _read(store_url)
    return seen if sum(1 for m in seen["members"] if test(m)) >= count else None


def _trigger(plane: Plane, agent: str, n: int) -> None:
    for _ in range(n):
        plane.trigger(agent)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_local_fleet_grows_for_a_queue_and_shrinks_without_stopping_a_busy_runner(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "project"
    _project(
        root,
        '[fleet.autoscale]\nprovider = "local"\nmin = 0\nmax = 3\nlabels = ["auto"]\n'
        "stabilization = 3\njoinTimeout = 90\n",
    )
    with control_plane(root, store_url, tmp_path / "start.log") as plane, Watch(store_url) as w:
        plane.push()
        burst = time.monotonic()
        _trigger(plane, "long", 1)
        _trigger(plane, "quick", 4)
        # the queue grows the fleet to max (3), never past it
        wait_for(lambda: sum(m.state == "active" for m in _read(store_url)["members"]) >= 3, 90)
        grown = time.monotonic() - burst

        def quick_done() -> bool:
            runs = _read(store_url)["runs"]
            quick = [r for r in runs if r.agent == "quick"]
            return len(quick) == 4 and all(r.state is RunState.SUCCEEDED for r in quick)

        wait_for(quick_done, 90)
        # idle runners are drained and stopped after the window; the long run's is kept
        seen = wait_for(lambda: _when(store_url, lambda m: m.state == "stopped", 2), 120)
        long_run = next(r for r in seen["runs"] if r.agent == "long")
        if long_run.state is RunState.RUNNING:
            keeper = next(m for m in seen["members"] if m.runner_id == long_run.runner_id)
            assert keeper.state in ("active", "draining"), keeper
        # then the long run ends, succeeded, and its runner goes too
        wait_for(
            lambda: all(m.state in ("stopped", "failed") for m in _read(store_url)["members"]),
            150,
        )
        last = _read(store_url)
        plane_log = plane.process.output()
        scraped = httpx.get(
            f"{plane.url}/metrics",
            headers={"Authorization": f"Bearer {plane.operator}"},
            timeout=30,
        )
    assert scraped.status_code == 200, scraped.text
    samples = parse(scraped.text)
    assert value(samples, "corral_fleet_scale_runners", state="stopped") == 3
    assert value(samples, "corral_fleet_scale_runners", state="active") == 0
    assert value(samples, "corral_fleet_scale_desired") == 0
    assert w.most <= 3, w.most
    assert not w.violations, w.violations
    assert [r.state for r in last["runs"]] == [RunState.SUCCEEDED] * 5, plane_log[-3000:]
    assert all(m.state == "stopped" for m in last["members"]), last["members"]
    # a drained runner is stopped no sooner than one long poll for work after its drain
    # (a request it had open may still have claimed a run)
    for m in last["members"]:
        drains = [d for d in last["decisions"] if m.name in d.inputs.get("drained", "")]
        assert drains and m.ended_at is not None, (m, last["decisions"])
        assert (m.ended_at - drains[-1].decided_at).total_seconds() >= MAX_WAIT, m
    assert len(last["members"]) == 3
    used = {r.runner_id for r in last["runs"]}
    assert used <= {m.runner_id for m in last["members"]}
    # each stopped runner is revoked, and its process is gone
    revoked = {r.id for r in last["runners"] if r.state.value == "revoked"}
    assert {m.runner_id for m in last["members"]} <= revoked
    for m in last["members"]:
        assert m.handle is not None and not _pid_alive(int(m.handle))
    directions = [d.direction for d in last["decisions"]]
    assert "grow" in directions and "shrink" in directions
    grow = next(d for d in reversed(last["decisions"]) if d.direction == "grow")
    assert grow.inputs["queued"] >= 1 and grow.inputs["provider"] == "local"
    # `corral scale log` shows the fleet's decisions
    shown = subprocess.run(
        [sys.executable, "-m", "corral", "scale", "log", FLEET],
        cwd=root,
        env=clean_env(tmp_path) | {"CORRAL_STATE_URL": store_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "grow" in shown.stdout and "shrink" in shown.stdout
    print(f"burst to 3 runners joined: {grown:.1f} s")


START = """#!/bin/sh
# a runner host for the test: records its environment, fails its first two starts
n=$(cat "{out}/starts" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{out}/starts"
env | grep '^CORRAL_' | sort > "{out}/env-$CORRAL_RUNNER_NAME"
if [ $n -le 2 ]; then echo "no capacity in the zone (try $n)" >&2; exit 7; fi
home="{out}/host-$CORRAL_RUNNER_NAME"; mkdir -p "$home"
CORRAL_HOME="$home" {py} -m corral runner join "$CORRAL_URL" --token "$CORRAL_RUNNER_TOKEN" \\
    --name "$CORRAL_RUNNER_NAME" --slots "$CORRAL_RUNNER_SLOTS" --config "$home/runner.json" \\
    >/dev/null || exit 3
CORRAL_HOME="$home" setsid {py} -m corral runner start --config "$home/runner.json" \\
    >"$home/log" 2>&1 </dev/null &
echo "vm-$!"
"""

STOP = """#!/bin/sh
env | grep '^CORRAL_' | sort > "{out}/stop-$CORRAL_RUNNER_NAME"
kill -TERM "${{CORRAL_RUNNER_HANDLE#vm-}}"
"""


def test_the_command_provider_runs_the_scripts_and_retries_a_failed_start(
    tmp_path: Path, store_url: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "start.sh").write_text(START.format(out=out, py=sys.executable))
    (scripts / "stop.sh").write_text(STOP.format(out=out))
    for script in scripts.iterdir():
        script.chmod(0o755)
    root = tmp_path / "project"
    _project(
        root,
        '[fleet.autoscale]\nprovider = "command"\nmin = 0\nmax = 1\nlabels = ["auto"]\n'
        f'stabilization = 2\nslotsPerRunner = 2\nstart = ["{scripts / "start.sh"}"]\n'
        f'stop = "{scripts / "stop.sh"}"\ncommandTimeout = 60\n',
    )
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        _trigger(plane, "quick", 2)

        def done() -> dict[str, Any] | None:
            seen = _read(store_url)
            ok = len(seen["runs"]) == 2 and all(r.state is RunState.SUCCEEDED for r in seen["runs"])
            return seen if ok else None

        wait_for(done, 120)
        seen = wait_for(lambda: _when(store_url, lambda m: m.state == "stopped", 1), 60)
        assert plane.process.proc.poll() is None  # the control plane carried on
    failed = [m for m in seen["members"] if m.state == "failed"]
    assert len(failed) == 2, seen["members"]
    assert all("exited with 7" in (m.detail or "") for m in failed)
    assert all("no capacity in the zone" in (m.detail or "") for m in failed)
    (served,) = [m for m in seen["members"] if m.state == "stopped"]
    assert served.handle is not None and served.handle.startswith("vm-")
    assert {r.runner_id for r in seen["runs"]} == {served.runner_id}
    # the start script got the URL, a fresh single-use token and the name
    env = dict(line.split("=", 1) for line in (out / f"env-{served.name}").read_text().splitlines())
    assert env["CORRAL_URL"] == plane.url
    assert env["CORRAL_RUNNER_TOKEN"].startswith("cft_")
    assert env["CORRAL_RUNNER_NAME"] == served.name
    assert env["CORRAL_RUNNER_SLOTS"] == "2"
    assert env["CORRAL_RUNNER_LABELS"] == "auto"
    tokens = {
        dict(line.split("=", 1) for line in p.read_text().splitlines())["CORRAL_RUNNER_TOKEN"]
        for p in out.glob("env-*")
    }
    assert len(tokens) == 3  # one token per start
    assert "CORRAL_STATE_URL" not in env
    stopped = dict(
        line.split("=", 1) for line in (out / f"stop-{served.name}").read_text().splitlines()
    )
    assert stopped["CORRAL_RUNNER_HANDLE"] == served.handle
    assert stopped["CORRAL_RUNNER_ID"] == served.runner_id
    failures = [d for d in seen["decisions"] if "error" in d.inputs]
    assert len(failures) == 2 and "exited with 7" in failures[0].inputs["error"]
    pid = int(served.handle.removeprefix("vm-"))
    wait_for(lambda: not _pid_alive(pid), 30)


@pytest.mark.parametrize(
    ("table", "found"),
    [
        ('provider = "command"\nmax = 2\nstart = "./up"\n', "without stop"),
        ('provider = "local"\nmin = 3\nmax = 2\n', "min = 3 above max = 2"),
        ('provider = "cloud"\nmax = 2\n', "provider"),
        ('provider = "local"\nmax = 2\nslotsPerRunner = 0\n', "slotsPerRunner"),
    ],
)
def test_a_bad_fleet_autoscale_table_is_refused_naming_where(
    tmp_path: Path, table: str, found: str
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "config.toml").write_text("[fleet]\n\n[fleet.autoscale]\n" + table)
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    text = str(caught.value)
    assert re.search(r"config\.toml:\d+: 'fleet\.autoscale", text), text
    assert found in text, text


def test_local_runners_are_found_again_after_a_restart_and_dead_ones_closed(
    tmp_path: Path, store_url: str
) -> None:
    """`corral start` stops; its two runners go on. One dies meanwhile: the next `corral
    start` keeps the live one (no new runner for it), records the dead one as failed
    and revokes it, and starts one in its place (min = 2)."""
    root = tmp_path / "project"
    _project(
        root,
        '[fleet.autoscale]\nprovider = "local"\nmin = 2\nmax = 2\nlabels = ["auto"]\n'
        "stabilization = 0\n",
    )
    port = _free_port()  # the runners go on reaching the same address
    try:
        with control_plane(root, store_url, tmp_path / "cp1.log", "--port", str(port)):
            first = wait_for(lambda: _when(store_url, lambda m: m.state == "active", 2), 90)
            # both runner processes are up: they heartbeat (a runner that cannot reach
            # its control plane when it starts gives up; one that is running waits)
            wait_for(lambda: _heartbeating(store_url) >= 2, 60)
        before = {m.name: m for m in first["members"]}
        assert len(before) == 2
        survivor, dead = sorted(before.values(), key=lambda m: m.name)
        assert _pid_alive(int(survivor.handle or 0)) and _pid_alive(int(dead.handle or 0))
        os.kill(int(dead.handle or 0), signal.SIGKILL)
        wait_for(lambda: not _pid_alive(int(dead.handle or 0)), 30)
        with control_plane(root, store_url, tmp_path / "cp2.log", "--port", str(port)):
            after = wait_for(
                lambda: (
                    _when(store_url, lambda m: m.state == "failed", 1)
                    and _when(store_url, lambda m: m.state == "active", 2)
                ),
                90,
            )
            assert len(after["members"]) == 3, [
                (m.name, m.state, m.detail) for m in after["members"]
            ]
        states = {m.name: m for m in after["members"]}
        assert states[survivor.name].state == "active"
        assert states[survivor.name].handle == survivor.handle  # the same process
        assert states[dead.name].state == "failed"
        assert "gone after a restart" in (states[dead.name].detail or "")
        revoked = {r.id for r in after["runners"] if r.state.value == "revoked"}
        assert dead.runner_id in revoked and survivor.runner_id not in revoked
    finally:
        for m in _read(store_url)["members"]:  # only the runner processes this test made
            if m.handle and m.handle.isdigit() and str(root).encode() in _cmdline(int(m.handle)):
                os.kill(int(m.handle), signal.SIGTERM)


def _heartbeating(store_url: str) -> int:
    """Runners that have heartbeat since they joined."""
    seen = _read(store_url)
    return sum(1 for r in seen["runners"] if r.last_heartbeat_at > r.joined_at)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_provider_scripts_get_no_secret_of_the_schedulers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.scheduler.fleet_providers import CommandProvider, StartSpec

    for key, secret in {
        "PGPASSWORD": "pg-secret",
        "OPENAI_API_KEY": "sk-secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "GITHUB_TOKEN": "gh-secret",
        "CORRAL_STATE_URL": "postgresql://u:p@db/x",
        "LC_ALL": "C.UTF-8",
    }.items():
        monkeypatch.setenv(key, secret)
    out = tmp_path / "env"
    script = tmp_path / "start.sh"
    script.write_text(f"#!/bin/sh\nenv > {out}\necho vm-1\n")
    script.chmod(0o755)
    provider = CommandProvider(tmp_path, (str(script),), "true", timeout=30)
    spec = StartSpec("auto-1", "http://127.0.0.1:1", "cft_x", ("auto",), 1)
    assert asyncio.run(provider.start(spec)) == "vm-1"
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert "secret" not in out.read_text()
    for key in ("PGPASSWORD", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "CORRAL_STATE_URL"):
        assert key not in env
    assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8"
    assert env["CORRAL_RUNNER_TOKEN"] == "cft_x"


def test_a_start_script_that_leaves_a_process_in_the_background_is_done_when_it_exits(
    tmp_path: Path,
) -> None:
    """A start script that starts its runner with ``&`` and no redirection (the runner
    inherits the script's output) is done when the script exits, not when the runner
    closes that output; what the script printed is still its handle."""
    from corral.scheduler.fleet_providers import CommandProvider, StartSpec

    pidfile = tmp_path / "bg.pid"
    script = tmp_path / "start.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\necho vm-7\n")
    script.chmod(0o755)
    provider = CommandProvider(tmp_path, (str(script),), "true", timeout=20)
    began = time.monotonic()
    try:
        handle = asyncio.run(provider.start(StartSpec("auto-1", "http://127.0.0.1:1", "t", (), 1)))
        took = time.monotonic() - began
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert handle == "vm-7"
    assert took < 10, took  # before: waited for the background sleep, until the timeout


async def test_a_cancelled_provider_script_is_killed_with_its_group(tmp_path: Path) -> None:
    """A provider call cancelled (the scheduler stopping) does not leave the script, or
    what it started, running unwatched."""
    from corral.scheduler.fleet_providers import CommandProvider

    pids = tmp_path / "pids"
    stop = tmp_path / "stop.sh"
    stop.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ $! > {pids}\nwait\n")
    stop.chmod(0o755)
    provider = CommandProvider(tmp_path, ("true",), (str(stop),), timeout=60)
    call = asyncio.create_task(provider.stop("auto-1", "vm-1", None))
    for _ in range(200):
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    script, child = map(int, pids.read_text().split())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not alive(script) and not alive(child)


async def test_a_slow_provider_stop_does_not_hold_the_tick_under_the_lease(
    tmp_path: Path, store: Store
) -> None:
    """A runner that did not join in time is failed and stopped; its stop (here a
    script that takes 20 s) runs in the background, so the tick, which holds a lease of
    a few seconds, never waits for it."""
    from corral.scheduler.fleetscale import FleetScaler

    out = tmp_path / "out"
    out.mkdir()
    start = tmp_path / "start.sh"
    start.write_text("#!/bin/sh\necho vm-1\n")
    stop = tmp_path / "stop.sh"
    stop.write_text(f"#!/bin/sh\ntouch {out}/stopping\nsleep 20\n")
    for script in (start, stop):
        script.chmod(0o755)
    root = tmp_path / "project"
    write_project(
        root,
        {"quick": {"command": ["true"], "runsOn": ["auto"]}},
        '[fleet.autoscale]\nprovider = "command"\nmin = 1\nmax = 1\nlabels = ["auto"]\n'
        f'joinTimeout = 1\nstart = ["{start}"]\nstop = ["{stop}"]\ncommandTimeout = 60\n',
    )
    project = load_project(root)
    scaler = FleetScaler(store, lambda: "s1", lambda: project, lambda: "http://127.0.0.1:1")
    longest = 0.0
    try:
        deadline = time.monotonic() + 30
        while not (out / "stopping").exists() and time.monotonic() < deadline:
            began = time.monotonic()
            await scaler.tick()
            longest = max(longest, time.monotonic() - began)
            await asyncio.sleep(0.3)
        assert (out / "stopping").exists()
        failed = [m for m in await store.fleet_members() if m.state == "failed"]
        assert failed and "did not join" in (failed[0].detail or "")
        assert longest < 5.0, longest
    finally:
        state_tasks = list(scaler._state.tasks) if scaler._state else []
        for task in state_tasks:
            task.cancel()
        await scaler.release()


def test_the_scaler_waits_out_the_runners_longest_request_for_work() -> None:
    """The scaler stops a drained runner only after the longest request for work a runner
    can have open: its own copy of that bound is the engine's."""
    from corral.engine.fleet_runs import MAX_WAIT
    from corral.scheduler.fleetscale import LONG_POLL_SECONDS

    assert LONG_POLL_SECONDS == MAX_WAIT


NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _spend(store: Store, agent: str, dollars: float) -> None:
    run = await store.create_run(NewRun(agent=agent, trigger=TriggerKind.MANUAL))
    zero = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0}
    assert await store.record_usage(run.id, **zero, cache_write_tokens=0, cost_usd=dollars)


async def _join(store: Store, name: str, labels: tuple[str, ...], slots: int) -> Runner:
    made = await store.create_fleet_token(
        hash_token(f"tok-{name}"), ttl=timedelta(days=1), labels=labels, actor="test"
    )
    assert made.labels == labels
    runner = await store.redeem_fleet_token(
        hash_token(f"tok-{name}"),
        hash_token(f"cred-{name}"),
        NewRunner(name=name, hostname=f"{name}.example", labels=labels, slots=slots),
    )
    assert isinstance(runner, Runner), runner
    return runner


async def test_fleet_demand_counts_only_runs_that_may_start(store: Store) -> None:
    """Items of paused, disabled or over-budget agents are held back, with why; the
    project's daily cap holds every agent's; live runs are counted per runner and agent."""
    store.clock = Clock(NOON)
    specs = [AgentSpec(n, 2, 10) for n in ("free", "paused", "off")]
    specs.append(AgentSpec("capped", 2, 10, daily_cost_cap=1.0))
    sync = {"scale_cap": None, "max_attempts": 3, "max_reruns": 0}
    await store.sync_project(specs, **sync)
    for agent, n in (("free", 2), ("capped", 3), ("paused", 1), ("off", 1)):
        for _ in range(n):
            await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
    await _spend(store, "capped", 1.5)  # after its items were queued: they wait, held
    await store.set_paused("paused", True)
    await store.set_enabled("off", False)
    runner = await _join(store, "r1", ("gpu",), 2)
    (claim,) = await store.claim(runner.id, lease_seconds=30, limit=1, agents=["free"], runner=True)
    demand = await store.fleet_demand()
    assert demand.queued == {"free": 1}
    assert demand.held["capped"][0] == 3
    assert demand.held["capped"][1].startswith("daily cost cap reached: agent 'capped'")
    assert demand.held["paused"] == (1, "agent 'paused' is paused")
    assert demand.held["off"] == (1, "agent 'off' is disabled by an operator")
    assert demand.stop is None and not demand.budget_stop
    assert set(demand.held_by_budget({"free", "capped", "paused"})) == {"capped"}
    assert demand.busy == {runner.id: 1}
    assert demand.busy_by_agent == {runner.id: {"free": 1}}
    assert claim.run.runner_id == runner.id
    # the project's daily cap reached: nothing may start, and it is a budget stop
    await store.sync_project(specs, **sync, daily_cost_cap=1.0)
    demand = await store.fleet_demand()
    assert demand.queued == {} and demand.budget_stop
    assert (demand.stop or "").startswith("daily cost cap reached: the project")
    assert set(demand.held_by_budget({"free", "capped", "paused", "off"})) == {
        "free",
        "capped",
        "paused",
        "off",
    }
    # the project paused: held, but not by a budget
    await store.sync_project(specs, **sync)
    await store.set_paused(None, True)
    demand = await store.fleet_demand()
    assert demand.queued == {} and not demand.budget_stop
    assert demand.stop == "the project is paused" and demand.held_by_budget({"free"}) == {}


async def test_the_fleet_never_grows_for_runs_a_daily_budget_holds_back(
    tmp_path: Path, store: Store
) -> None:
    """Runs waiting for the fleet's runners whose agent is over its daily budget (or
    paused) are not demand: the autoscaler starts no runner for them (its start script,
    a real process, never runs) and records them, with the cap's words, in its decision;
    a run that may start grows the fleet by one runner, and the project's cap reached
    stops all growth."""
    store.clock = Clock(NOON)
    out = tmp_path / "out"
    out.mkdir()
    start = tmp_path / "start.sh"
    start.write_text(f'#!/bin/sh\necho "$CORRAL_RUNNER_NAME" >> {out}/started\necho vm-1\n')
    start.chmod(0o755)
    root = tmp_path / "project"
    project = write_project(
        root,
        {
            "capped": {"command": ["true"], "runsOn": ["auto"], "scale": 4},
            "paused": {"command": ["true"], "runsOn": ["auto"], "scale": 4},
            "free": {"command": ["true"], "runsOn": ["auto"], "scale": 4},
        },
        '[fleet.autoscale]\nprovider = "command"\nmin = 0\nmax = 3\nlabels = ["auto"]\n'
        f'joinTimeout = 600\nslotsPerRunner = 2\nstart = ["{start}"]\nstop = ["true"]\n'
        "commandTimeout = 60\n",
        tables={"capped": "[budget]\ndailyCost = 1.0\n"},
    )
    await sync_config(store, project)
    for _ in range(4):
        await store.enqueue(NewItem(agent="capped", trigger=TriggerKind.MANUAL))
    await store.enqueue(NewItem(agent="paused", trigger=TriggerKind.MANUAL))
    await _spend(store, "capped", 2.0)
    await store.set_paused("paused", True)
    scaler = FleetScaler(store, lambda: "s1", lambda: project, lambda: "http://127.0.0.1:1")
    try:
        for _ in range(3):
            await scaler.tick()
        await asyncio.sleep(0.5)  # a start, had one been asked for, has run by now
        assert not (out / "started").exists()
        assert await store.fleet_members() == []
        (held,) = await store.pool_decisions(FLEET, limit=10)
        assert held.desired == 0 and held.inputs["queued"] == 0
        assert held.inputs["budget_held"] == 4 and held.inputs["held"] == 5
        assert "daily cost cap reached: agent 'capped'" in held.inputs["budget"]
        assert "paused: 1 (agent 'paused' is paused)" in held.inputs["held_agents"]
        assert "4 run(s) held by a daily budget" in held.reason
        # a run that may start is demand: one runner, for it alone
        await store.enqueue(NewItem(agent="free", trigger=TriggerKind.MANUAL))
        await scaler.tick()
        for _ in range(300):  # the start runs in the background
            if (out / "started").exists():
                break
            await asyncio.sleep(0.1)
        assert (out / "started").exists()
        grow = (await store.pool_decisions(FLEET, limit=1))[0]
        assert (grow.direction, grow.desired, grow.inputs["queued"]) == ("grow", 1, 1)
        assert grow.inputs["budget_held"] == 4
        # the project's daily cap reached: no growth, whatever waits
        await store.sync_project(
            agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=0, daily_cost_cap=1.0
        )
        for _ in range(3):
            await store.enqueue(NewItem(agent="free", trigger=TriggerKind.MANUAL))
        await _spend(store, "free", 0.5)
        for _ in range(3):
            await scaler.tick()
        await asyncio.sleep(0.5)
        assert len((out / "started").read_text().split()) == 1
        assert len(await store.fleet_members()) == 1
        last = (await store.pool_decisions(FLEET, limit=1))[0]
        assert last.desired <= 1 and last.inputs["queued"] == 0
        assert last.inputs["budget_stop"] is True
        assert "daily cost cap reached: the project" in last.inputs["budget"]
        # `corral scale log` shows the runs held back with the fleet's decisions
        shown = subprocess.run(
            [sys.executable, "-m", "corral", "scale", "log", FLEET],
            cwd=root,
            env=clean_env(tmp_path) | {"CORRAL_STATE_URL": store.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert '"budget_held":4' in shown.stdout.replace(" ", ""), shown.stdout
        assert "held by a daily budget" in shown.stdout
    finally:
        for task in list(scaler._state.tasks) if scaler._state else []:
            task.cancel()
        await scaler.release()


def test_a_pool_on_the_fleets_runners_grows_with_their_slots(
    tmp_path: Path, store_url: str
) -> None:
    """A pooled agent that runs on runners, with a fleet that starts at none: the runs
    waiting grow the fleet (the pool's size is no hold), and the pool grows with the
    slots the new runners bring, never past them; every run succeeds."""
    root = tmp_path / "project"
    write_project(
        root,
        {"pooled": {"command": ["/bin/sh", "-c", "sleep 3 # fleetscale-mark"], "runsOn": ["auto"]}},
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n"
        '[fleet.autoscale]\nprovider = "local"\nmin = 0\nmax = 2\nlabels = ["auto"]\n'
        "stabilization = 3\njoinTimeout = 90\n",
        tables={"pooled": '[scale]\nmin = 0\nmax = 4\npolicy = "reactive"\nstabilization = 2\n'},
    )
    try:
        with control_plane(root, store_url, tmp_path / "start.log") as plane:
            plane.push()
            _trigger(plane, "pooled", 4)

            def done() -> dict[str, Any] | None:
                seen = _read(store_url)
                ok = len(seen["runs"]) == 4 and all(r.state.is_terminal for r in seen["runs"])
                return seen if ok else None

            seen = wait_for(done, 150)
            decisions = _read_pool(store_url, "pooled")
            plane_log = plane.process.output()
    finally:
        _end_local_runners(store_url)
    assert all(r.state is RunState.SUCCEEDED for r in seen["runs"]), plane_log[-3000:]
    assert decisions, plane_log[-3000:]
    # never a pool larger than 2 runners' slots, nor than the slots each decision saw
    assert max(d.desired for d in decisions) <= 2, [(d.desired, d.inputs) for d in decisions]
    assert all(d.desired <= max(d.inputs["slots"], d.size) for d in decisions), decisions
    grows = [d for d in decisions if d.direction == "grow"]
    assert grows and all(d.inputs["runners"] >= 1 for d in grows), decisions
    assert {r.runner_id for r in seen["runs"]} <= {m.runner_id for m in seen["members"]}


def _end_local_runners(store_url: str) -> None:
    """Stop the `local` runner processes the fleet started (they outlive `corral start` by
    design, so a test that ends before the fleet shrank must end them itself)."""
    for member in _read(store_url)["members"]:
        if member.handle and member.handle.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(member.handle), signal.SIGKILL)
    for member in _read(store_url)["members"]:
        if member.handle and member.handle.isdigit():
            wait_for(lambda pid=int(member.handle): not _pid_alive(pid), 15)


def _read_pool(store_url: str, agent: str) -> list[Any]:
    async def read() -> list[Any]:
        async with await open_store(store_url) as store:
            return await store.pool_decisions(agent, limit=1000)

    return asyncio.run(read())
