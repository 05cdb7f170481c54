"""Simulated hosts for fleet tests: network namespaces joined to this one by veth pairs.

A ``Host`` is a network namespace of its own (its own loopback, its own routes) with one
veth pair to the test's namespace: the host sees the control plane at ``host.peer`` and
the control plane sees the host at ``host.address``. Nothing is routed between hosts or
beyond them (each pair is a free /30 of 10.64.0.0/10 of its own and forwarding stays
off), so traffic goes only to loopback and to these namespaces.

Faults a fleet must survive, made for real:

* ``host.cut()`` / ``host.mend()``: the link goes down (a network partition: packets
  are dropped, connections hang rather than being refused) and comes back;
* ``host.freeze()`` / ``host.thaw()``: every process in the namespace gets SIGSTOP
  (a frozen host: its clock stops for everyone watching it) and SIGCONT;
* ``host.kill()``: every process in the namespace gets SIGKILL (the host died).

Every namespace and link is removed when the ``hosts`` context ends, even after a
failure; names carry the test process's pid and addresses are chosen under a file lock,
so parallel runs never collide. It
needs root and iproute2 (``ip``); ``require_netns()`` skips without them, or fails
under ``CORRAL_REQUIRE_NETNS=1`` (set by CI).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_IP = shutil.which("ip") or "/usr/sbin/ip"
_serial = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_IP, *args], capture_output=True, text=True, check=check, timeout=20)


@functools.cache
def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not Path(_IP).exists():
        return "iproute2's `ip` is not installed"
    probe = f"crp{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip (or, with CORRAL_REQUIRE_NETNS=1, fail) where namespaces cannot be made."""
    problem = _netns_problem()
    if problem is None:
        return
    if os.environ.get("CORRAL_REQUIRE_NETNS") == "1":
        pytest.fail(f"{problem} (CORRAL_REQUIRE_NETNS=1 demands simulated hosts)")
    pytest.skip(problem)


@contextlib.contextmanager
def _allocation() -> Iterator[None]:
    """Held while a free /30 is chosen and taken: test processes running side by side
    (parallel workers, several checkouts) must never pick the same addresses, and Linux
    would let them (one address on two links is allowed, and silently misroutes)."""
    with open("/run/corral-test-hosts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_subnet() -> tuple[str, str]:
    """The two addresses of an unused /30 in 10.64.0.0/10: (this side, the host's side)."""
    shown = _ip("-o", "-4", "addr", "show").stdout
    taken = {word.split("/")[0] for word in shown.split() if word.startswith("10.")}
    for second in range(64, 128):
        for third in range(256):
            here, there = f"10.{second}.{third}.1", f"10.{second}.{third}.2"
            if here not in taken:
                return here, there
    raise RuntimeError("no free /30 left in 10.64.0.0/10 for a simulated host")


@dataclass
class Host:
    """One simulated host. ``address`` is the host's own; ``peer`` is how it reaches us."""

    name: str
    netns: str
    link: str
    address: str
    peer: str
    _frozen: list[int] = field(default_factory=list)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = subprocess.DEVNULL,
        stderr: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside the host (``ip netns exec``; the process is the exec'd one)."""
        return subprocess.Popen(
            [_IP, "netns", "exec", self.netns, *argv],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )

    def run(self, argv: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_IP, "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pids(self) -> list[int]:
        """Every live process in the host's namespace."""
        found = _ip("netns", "pids", self.netns, check=False)
        return [int(word) for word in found.stdout.split()]

    def cut(self) -> None:
        """Partition the host: its link goes down on both ends (packets vanish)."""
        _ip("link", "set", self.link, "down")
        _ip("-n", self.netns, "link", "set", "eth0", "down")

    def mend(self) -> None:
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("link", "set", self.link, "up")

    def freeze(self) -> list[int]:
        """SIGSTOP every process in the host; returns the pids stopped."""
        stopped = []
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        self._frozen.extend(stopped)
        return stopped

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen.clear()

    def kill(self) -> list[int]:
        """SIGKILL every process in the host (the host died); returns the pids killed."""
        killed = []
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed


def _make(name: str) -> Host:
    tag = f"{os.getpid() % 100000}x{next(_serial)}"
    netns = f"cr{tag}-{name}"[:40]
    link = f"crv{tag}"[:15]
    _ip("netns", "add", netns)
    host = Host(name=name, netns=netns, link=link, address="", peer="")
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        _ip("link", "set", f"{link}p", "netns", netns)
        _ip("-n", netns, "link", "set", f"{link}p", "name", "eth0")
        with _allocation():
            here, there = _free_subnet()
            _ip("addr", "add", f"{here}/30", "dev", link)
        host.address, host.peer = there, here
        _ip("link", "set", link, "up")
        _ip("-n", netns, "addr", "add", f"{there}/30", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
    except BaseException:
        _remove(host)
        raise
    return host


def _remove(host: Host) -> None:
    host.thaw()
    host.kill()
    _ip("link", "del", host.link, check=False)  # takes its peer in the namespace with it
    _ip("netns", "del", host.netns, check=False)


@contextlib.contextmanager
def hosts(*names: str) -> Iterator[dict[str, Host]]:
    """Simulated hosts by name, removed (processes killed, links and namespaces deleted)
    when the block ends, however it ends."""
    require_netns()
    made: dict[str, Host] = {}
    try:
        for name in names:
            made[name] = _make(name)
        yield made
    finally:
        for host in made.values():
            _remove(host)
