"""Run containment: every process a run starts can be found, and killed, as one.

A process group is not enough: a child that calls ``setsid`` (or a daemon that double
forks) leaves it. corral puts each process it starts for a run in a cgroup of its
own, ``<corral's cgroup>/corral-runs/<run id>.<scheduler pid>.<n>``, before that
process runs a single instruction of its program (a ``/bin/sh`` stub writes its own
pid into the cgroup, then ``exec``\\ s the program). Every descendant is born in the
same cgroup and cannot leave it without privileges the run does not have. The
mechanism is chosen once per process, the first that works here:

* cgroup v2 (any hierarchy, controllers are not needed): ``cgroup.kill`` kills every
  process in the cgroup at once, forks in flight included (Linux 5.14+; before that the
  cgroup is frozen first, then its processes killed);
* cgroup v1 ``freezer``: frozen, every process killed, thawed, until empty;
* cgroup v1 ``pids``: every process killed, until empty;
* none (no cgroup corral may create): only the marker below.

The marker: every process of a run carries ``CORRAL_RUN_ID=<id>`` in its environment,
so ``/proc`` is also scanned for it when a run ends. That finds what a cgroup cannot
(on a machine without one) unless the process replaced its whole environment.
Signals go through a pidfd opened before the environment is read, so a recycled pid
is never signalled.

`kill_run` is the one way a run's processes are ended: at the end of every run (after
its main process exited and a short grace), on timeout, ``corral kill``, shutdown,
orphan clean-up after a scheduler died, and by the self-fencing watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import os
import re
import signal
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.runtime._limits import parse_cgroup_mounts, parse_proc_cgroup

__all__ = [
    "ContainSupport",
    "Containment",
    "contain_support",
    "detect_containment",
    "kill_run",
    "kill_run_async",
    "marked_pids",
    "run_pids",
]

Kind = Literal["cgroup2", "freezer", "pids", "marker"]

#: The directory, under corral's own cgroup, that holds the run cgroups.
RUNS_DIR = "corral-runs"
MARKER = "CORRAL_RUN_ID"
_counter = itertools.count(1)
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How many rounds of killing before giving up on a cgroup that keeps refilling.
_KILL_ROUNDS = 50
_SETTLE = 0.005
#: Writes the stub's own pid into the cgroup ($0), then runs the program ("$@").
_STUB_PLAIN = 'echo $$ >"$0" || exit 126; unset PWD; exec "$@"'
_STUB_PWD = 'echo $$ >"$0" || exit 126; PWD=$1; export PWD; shift; exec "$@"'


@dataclass(frozen=True)
class ContainSupport:
    """How this machine contains runs (see the module doc)."""

    kind: Kind
    base: Path | None  # <corral's cgroup>/corral-runs; None for "marker"
    why_not: str = ""  # why no cgroup is used, when kind is "marker"

    def describe(self) -> str:
        if self.base is None:
            return f"environment marker only (no cgroup: {self.why_not})"
        return f"{self.kind} cgroups under {self.base}"


@functools.cache
def contain_support() -> ContainSupport:
    """`detect_containment`, once per process."""
    return detect_containment()


def detect_containment(proc: Path = Path("/proc")) -> ContainSupport:
    """The first containment mechanism that works for this process."""
    try:
        memberships = parse_proc_cgroup((proc / "self" / "cgroup").read_text())
        mounts = parse_cgroup_mounts((proc / "self" / "mountinfo").read_text())
    except OSError as exc:
        return ContainSupport("marker", None, f"cannot read /proc: {exc.strerror or exc}")
    reasons: list[str] = []
    candidates: list[tuple[Kind, Path]] = []
    for mount in mounts:
        key = "" if mount.version == 2 else _v1_controller(mount.controllers)
        if key is None or key not in memberships:
            continue
        root = mount.root.rstrip("/")
        path = memberships[key]
        if path != root and not path.startswith(root + "/"):
            continue
        own = mount.mountpoint / path[len(root) :].lstrip("/")
        kind: Kind = (
            "cgroup2" if mount.version == 2 else ("freezer" if key == "freezer" else "pids")
        )
        candidates.append((kind, own))
    order = {"cgroup2": 0, "freezer": 1, "pids": 2}
    for kind, own in sorted(candidates, key=lambda c: order[c[0]]):
        try:
            base = own / RUNS_DIR
            base.mkdir(exist_ok=True)
            _probe(base, own)
        except OSError as exc:
            reasons.append(f"{kind} in {own}: {exc.strerror or exc}")
            continue
        _sweep(base)
        return ContainSupport(kind, base)
    return ContainSupport("marker", None, "; ".join(reasons) or "no cgroup hierarchy found")


def _v1_controller(controllers: frozenset[str]) -> str | None:
    for name in ("freezer", "pids"):
        if name in controllers:
            return name
    return None


def _probe(base: Path, own: Path) -> None:
    probe = base / f"probe.{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        for path in (probe / "cgroup.procs", own / "cgroup.procs"):
            if not os.access(path, os.W_OK):
                raise PermissionError(13, f"{path} is not writable")
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _sweep(base: Path) -> None:
    """Remove empty run cgroups that schedulers which are gone left behind."""
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            parts = entry.name.rsplit(".", 2)
            if len(parts) >= 2 and parts[-2].isdigit() and not Path(f"/proc/{parts[-2]}").exists():
                with contextlib.suppress(OSError):
                    entry.rmdir()


def cgroup_prefix(run_id: str) -> str:
    """The run's part of its cgroup names (the run id, or a digest of an odd one)."""
    if _SAFE.fullmatch(run_id):
        return run_id
    return "h" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


class Containment:
    """The cgroup of one started process and all it starts (a no-op without cgroups)."""

    def __init__(self, support: ContainSupport, run_id: str | None) -> None:
        self.support = support
        self.run_id = run_id
        self.path: Path | None = None
        if support.base is not None:
            name = cgroup_prefix(run_id or "process")
            self.path = support.base / f"{name}.{os.getpid()}.{next(_counter)}"

    @classmethod
    def create(cls, support: ContainSupport, run_id: str | None) -> Containment:
        made = cls(support, run_id)
        made.make()
        return made

    def make(self) -> None:
        """Make the cgroup (blocking: where a process is started, in its thread); when
        that fails the process is contained by the marker only."""
        if self.path is not None:
            try:
                os.mkdir(self.path)
            except OSError:
                self.path = None

    def wrap(self, argv: Sequence[str], env_pwd: str | None) -> list[str]:
        """``argv`` started through the stub that enters the cgroup first.

        The stub keeps the environment as given: it removes the ``PWD`` the shell
        would add, or restores the one in ``env_pwd``.
        """
        if self.path is None:
            return list(argv)
        procs = str(self.path / "cgroup.procs")
        if env_pwd is None:
            return ["/bin/sh", "-c", _STUB_PLAIN, procs, *argv]
        return ["/bin/sh", "-c", _STUB_PWD, procs, env_pwd, *argv]

    def discard(self) -> None:
        """Remove the cgroup of a process that never started."""
        if self.path is not None:
            _remove(self.path)

    def pids(self) -> list[int]:
        return [] if self.path is None else _cgroup_pids(self.path)

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    async def kill(self) -> bool:
        """Kill every process in the cgroup and remove it; False if something is left."""
        if self.path is None:
            return True
        for _ in range(_KILL_ROUNDS):
            if _kill_round(self.path, self.support.kind):
                break
            await asyncio.sleep(_SETTLE)
        return _remove(self.path)


# --- killing --------------------------------------------------------------------------


def _cgroup_pids(path: Path) -> list[int]:
    try:
        text = (path / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _kill_round(path: Path, kind: Kind) -> bool:
    """One attempt at emptying the cgroup at ``path``; True when it is empty."""
    pids = _cgroup_pids(path)
    if not pids:
        return True
    if kind == "cgroup2" and (path / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        return False
    frozen = _freeze(path, kind, True)
    for pid in _cgroup_pids(path):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if frozen:
        _freeze(path, kind, False)
    return False


def _freeze(path: Path, kind: Kind, freeze: bool) -> bool:
    """Freeze (or thaw) the cgroup; False when this kind cannot be frozen."""
    try:
        if kind == "freezer":
            (path / "freezer.state").write_text("FROZEN" if freeze else "THAWED")
            deadline = time.monotonic() + 0.5
            while freeze and time.monotonic() < deadline:
                if (path / "freezer.state").read_text().strip() == "FROZEN":
                    break
                time.sleep(0.001)
            return True
        if kind == "cgroup2":
            (path / "cgroup.freeze").write_text("1" if freeze else "0")
            return True
    except OSError:
        return False
    return False


def _remove(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def run_cgroups(support: ContainSupport, run_id: str) -> list[Path]:
    """Every cgroup of ``run_id`` on this machine, whichever scheduler made it."""
    if support.base is None:
        return []
    prefix = cgroup_prefix(run_id) + "."
    try:
        with os.scandir(support.base) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(prefix)]
    except OSError:
        return []
    return [support.base / name for name in sorted(names)]


def run_pids(run_id: str, support: ContainSupport | None = None) -> set[int]:
    """The live processes of ``run_id`` on this machine: in its cgroups or marked."""
    support = support or contain_support()
    found = set(marked_pids(run_id))
    for path in run_cgroups(support, run_id):
        found.update(_cgroup_pids(path))
    return found


def marked_pids(run_id: str, proc: Path = Path("/proc")) -> list[int]:
    """The live processes whose environment carries ``CORRAL_RUN_ID=<run_id>``."""
    return [pid for pid, _ in _marked(run_id, proc, keep=False)]


def _marked(run_id: str, proc: Path, *, keep: bool) -> list[tuple[int, int]]:
    """(pid, pidfd) of marked processes; with ``keep`` a pidfd is opened for each and
    the environment read again through it (a recycled pid is left alone), else -1."""
    wanted = f"{MARKER}={run_id}".encode()
    found: list[tuple[int, int]] = []
    me = os.getpid()
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit() and int(e) != me]
    except OSError:
        return found
    for entry in entries:
        if not _carries(proc / entry / "environ", wanted):
            continue
        fd = -1
        if keep:
            try:
                fd = os.pidfd_open(int(entry))
            except OSError:
                continue
            if not _carries(proc / entry / "environ", wanted):
                os.close(fd)
                continue
        found.append((int(entry), fd))
    return found


def _carries(environ: Path, wanted: bytes) -> bool:
    try:
        return wanted in environ.read_bytes().split(b"\0")
    except OSError:
        return False


def _kill_marked(run_id: str) -> int:
    """SIGKILL every marked process once (through a pidfd); how many were found."""
    found = _marked(run_id, Path("/proc"), keep=True)
    for _, fd in found:
        try:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
    return len(found)


def _killing(run_id: str, support: ContainSupport, scan: bool) -> Generator[None, None, bool]:
    """The rounds of killing a run's processes; it yields where the caller should wait a
    moment before the next round, and returns True when nothing of the run is left."""
    clean = True
    for path in run_cgroups(support, run_id):
        for _ in range(_KILL_ROUNDS):
            if _kill_round(path, support.kind):
                break
            yield
        clean = _remove(path) and clean
    for _ in range(_KILL_ROUNDS if scan else 0):
        if _kill_marked(run_id) == 0:
            return clean
        yield
    return clean and not scan


def kill_run(
    run_id: str, support: ContainSupport | None = None, *, scan: bool | None = None
) -> bool:
    """Kill every process of ``run_id`` on this machine, and remove its cgroups.

    ``scan``: also look for the marker in ``/proc`` (by default only where there is no
    cgroup: a process started in a cgroup cannot leave it). Blocking, for the watchdog
    and clean-up outside an event loop; True when nothing of the run is left.
    """
    support = support or contain_support()
    steps = _killing(run_id, support, support.base is None if scan is None else scan)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return bool(done.value)
        time.sleep(_SETTLE)


async def kill_run_async(
    run_id: str, support: ContainSupport | None = None, *, scan: bool | None = None
) -> bool:
    """`kill_run` for the event loop: the rounds (``/proc`` scans, cgroup freezes, the
    waits between them) run in a worker thread, so renewals are never held up by them.

    The usual end of a run has nothing left: its processes' cgroups were removed when
    they ended, and with cgroups no ``/proc`` scan is needed. That is seen here from
    one listing of the run cgroups' directory, without a thread.
    """
    support = support or contain_support()
    sweep = support.base is None if scan is None else scan
    if not sweep and not run_cgroups(support, run_id):
        return True
    return await asyncio.to_thread(kill_run, run_id, support, scan=scan)
