"""Self-fencing (issue 13, item 14): a frozen scheduler's runs stop before its leases lapse.

Two real `corral start` processes on one store, each in a UTS namespace of its own (two
"hosts": neither takes the other's runs for its own orphans). The one that runs a
lock-holding agent is frozen with SIGSTOP for twice its lease, as a partition would
freeze it. The processes are sampled from /proc every ~50 ms: never two live holders
of the lock, never more live runs than the agent's scale.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corral.store import ItemState, RunState, open_store
from tests.processes import wait_until
from tests.scheduler.helpers import write_project
from tests.scheduler.test_recovery import enqueue, locks, snapshot

pytestmark = pytest.mark.slow

LEASE = 6.0
RENEW = 1.0
SCALE = 2
LAUNCHER = Path(__file__).with_name("_short_lease.py")


def start_host(name: str, root: Path, store_url: str, log: Path) -> subprocess.Popen[bytes]:
    """`corral start --headless` with short leases, in a UTS namespace named ``name``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_STATE_URL": store_url, "HOME": str(root.parent)})
    argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name]
    argv += [sys.executable, str(LAUNCHER), str(LEASE), str(RENEW)]
    argv += ["start", "--headless", "--port", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


class Sampler(threading.Thread):
    """Every ~50 ms, the runs of one agent that have a live process, and those of them
    inside the critical section (a process with CRIT_HOLDER=1 in its environment)."""

    def __init__(self, agent_dir: Path) -> None:
        super().__init__(daemon=True)
        self.wanted = f"CORRAL_AGENT_DIR={agent_dir}".encode()
        self.halt = threading.Event()
        self.max_runs = self.max_holders = self.samples = 0
        self.holders_seen: set[str] = set()
        self.worst: list[tuple[float, set[str], set[str]]] = []

    def sample(self) -> tuple[set[str], set[str]]:
        runs: set[str] = set()
        holders: set[str] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if self.wanted not in fields:
                continue
            run_id = next((f[14:].decode() for f in fields if f.startswith(b"CORRAL_RUN_ID=")), "")
            runs.add(run_id)
            if b"CRIT_HOLDER=1" in fields:
                holders.add(run_id)
        return runs, holders

    def run(self) -> None:
        while not self.halt.is_set():
            runs, holders = self.sample()
            self.samples += 1
            self.holders_seen |= holders
            if len(runs) > self.max_runs or len(holders) > self.max_holders:
                self.worst.append((time.monotonic(), runs, holders))
            self.max_runs = max(self.max_runs, len(runs))
            self.max_holders = max(self.max_holders, len(holders))
            time.sleep(0.05)


def scheduler_hosts(url: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        async with await open_store(url) as store:
            return {s.id: s.host for s in await store.list_schedulers(live_only=True)}

    return asyncio.run(go())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_frozen_scheduler_stops_its_runs_before_its_leases_lapse(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "p"
    go = tmp_path / "go"
    critical = (
        f'while [ ! -e {go} ]; do rlock-heartbeat "test://crit" > /dev/null || exit 4; '
        "sleep 0.1; done"
    )
    command = (
        'rlock "test://crit" --wait --timeout 120 > /dev/null || exit 3; '
        f"CRIT_HOLDER=1 sh -c '{critical}' || exit 5; "
        'runlock "test://crit" > /dev/null'
    )
    write_project(root, {"crit": {"scale": SCALE, "command": command}})
    sampler = Sampler(root / "agents" / "crit")
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    first = start_host("host-a", root, store_url, a_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: list(scheduler_hosts(store_url).values()) == ["host-a"], 30)
        ids = enqueue(store_url, "crit", SCALE)
        # Both runs on host-a: one holds the lock, the other waits for it.
        wait_until(lambda: len(locks(store_url)) == 1, 30)
        wait_until(
            lambda: sum(r.state is RunState.RUNNING for r in snapshot(store_url)[0]) == SCALE,
            30,
        )
        frozen_runs = {r.id for r in snapshot(store_url)[0]}
        [old_holder] = [lock.run_id for lock in locks(store_url)]
        second = start_host("host-b", root, store_url, b_log)
        wait_until(lambda: sorted(scheduler_hosts(store_url).values()) == ["host-a", "host-b"], 30)
        sampler.start()
        time.sleep(0.5)
        os.kill(first.pid, signal.SIGSTOP)  # the scheduler only: its runs go on
        frozen_at = time.monotonic()

        def taken_over() -> bool:
            held = locks(store_url)
            return len(held) == 1 and held[0].run_id not in frozen_runs

        wait_until(taken_over, 4 * LEASE)  # host-b recovered, re-delivered, relocked
        time.sleep(max(0.0, frozen_at + 2 * LEASE - time.monotonic()))
        os.kill(first.pid, signal.SIGCONT)
        time.sleep(1.0)  # host-a wakes up, finds its renewal overdue, hands its runs back
        go.touch()
        wait_until(lambda: all(i.state is ItemState.DONE for i in snapshot(store_url)[1]), 60)
    finally:
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join(5)
        stop(first)
        if second is not None:
            stop(second)
    assert sampler.samples > 100
    assert sampler.max_holders == 1, sampler.worst  # never two live holders of the lock
    assert sampler.max_runs <= SCALE, sampler.worst  # never more live runs than scale
    assert old_holder in sampler.holders_seen and len(sampler.holders_seen) >= 2
    runs, items = snapshot(store_url)
    assert sorted(i.id for i in items) == sorted(ids)
    by_id = {r.id: r for r in runs}
    for run_id in frozen_runs:  # recovered by host-b, never finalised by host-a
        assert by_id[run_id].state is RunState.LOST, by_id[run_id]
    redelivered = [r for r in runs if r.id not in frozen_runs]
    assert [r.state for r in redelivered] == [RunState.SUCCEEDED] * SCALE
    assert all(r.host == "host-b" for r in redelivered)
    text = a_log.read_text(errors="replace")
    # The watchdog, while host-a was frozen; then host-a itself, once awake.
    assert "lease renewal overdue" in text and "killed the processes of run" in text
    assert locks(store_url) == []


def test_a_scheduler_that_wakes_past_its_deadline_hands_its_run_back(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "p"
    pidfile = tmp_path / "first.pid"
    # The first attempt works until it is stopped; the second succeeds.
    command = (
        f'if [ "$CORRAL_ATTEMPT" = 1 ]; then echo $$ > {pidfile}; '
        "while :; do sleep 0.05; done; fi; echo second attempt"
    )
    write_project(root, {"work": {"scale": 1, "command": command}})
    log = tmp_path / "a.log"
    proc = start_host("host-a", root, store_url, log)
    try:
        wait_until(lambda: list(scheduler_hosts(store_url).values()) == ["host-a"], 30)
        [item_id] = enqueue(store_url, "work", 1)
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30)
        first_pid = int(pidfile.read_text())
        [first] = snapshot(store_url)[0]
        os.kill(proc.pid, signal.SIGSTOP)
        # Frozen alone: nobody else can recover its lease. Its watchdog stops the run
        # at the deadline, a second before the lease lapses; then it is woken.
        wait_until(lambda: "lease renewal overdue" in log.read_text(errors="replace"), 3 * LEASE)
        # The watchdog logs after it has sent SIGKILL; the kernel may still be tearing
        # the process down, so give it a moment to be dead (zombie or gone).
        wait_until(lambda: _state(first_pid) in ("Z", "X", "gone"), 2)
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: all(i.state is ItemState.DONE for i in snapshot(store_url)[1]), 60)
    finally:
        stop(proc)
    runs, [item] = snapshot(store_url)
    assert item.id == item_id and item.attempts == 2
    by_id = {r.id: r for r in runs}
    ended = by_id[first.id]
    # Handed back (or recovered, if its own recovery saw the lapse first): never
    # recorded as if its killed process had simply failed.
    assert ended.state in (RunState.KILLED, RunState.LOST), ended
    assert ended.error is not None
    assert "self-fenced" in ended.error or "lease lapsed" in ended.error, ended.error
    [second] = [r for r in runs if r.id != first.id]
    assert second.state is RunState.SUCCEEDED


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
