"""Memory and CPU limits for sandboxed runs: which mechanism this machine offers.

Each run that asks for a limit gets its own cgroup, a child of corral's own
cgroup (``<corral's cgroup>/corral/run-<corral pid>-<n>``), when corral may create
one there: cgroup v2 if the controller can be handed down to children (corral's
cgroup lists it in ``cgroup.subtree_control``, or accepts it there: the root
cgroup), else cgroup v1 if that controller's hierarchy is writable (root on a
v1 or hybrid host). Without a cgroup, memory falls back to ``RLIMIT_AS`` on the
sandbox's first process (inherited by every process it starts; it caps each
process's address space, not the run's total) and CPU is not enforced.
See docs/sandbox.md.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.errors import RunError

__all__ = ["CgroupBase", "LimitSupport", "RunCgroup", "detect_limits", "limit_support"]

#: The cgroup CPU period; ``cpus`` becomes a quota of ``cpus * PERIOD`` per period.
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel's floor for a quota
_DIR = "corral"
_counter = itertools.count(1)

Controller = Literal["memory", "cpu"]


@dataclass(frozen=True)
class CgroupBase:
    """Where run cgroups for one controller are created."""

    version: Literal[1, 2]
    path: Path  # <corral's cgroup>/corral

    def describe(self, controller: Controller) -> str:
        knob = {
            (2, "memory"): "memory.max",
            (2, "cpu"): "cpu.max",
            (1, "memory"): "memory.limit_in_bytes",
            (1, "cpu"): "cpu.cfs_quota_us",
        }[(self.version, controller)]
        return f"cgroup v{self.version} {knob} under {self.path}"


@dataclass(frozen=True)
class LimitSupport:
    """The limit mechanisms available to this process (see the module doc)."""

    memory: CgroupBase | None
    cpu: CgroupBase | None
    #: Why no cgroup could be used, per controller (empty when one is used).
    why_not: dict[str, str] = field(default_factory=dict)

    @property
    def memory_mechanism(self) -> str:
        if self.memory is None:
            return "RLIMIT_AS (per process address space)"
        return self.memory.describe("memory")

    @property
    def cpu_mechanism(self) -> str | None:
        return None if self.cpu is None else self.cpu.describe("cpu")


@functools.cache
def limit_support() -> LimitSupport:
    """`detect_limits`, once per process."""
    return detect_limits()


def detect_limits(proc: Path = Path("/proc")) -> LimitSupport:
    """Find, for memory and for CPU, a cgroup corral can create run cgroups under.

    Creates ``<corral's cgroup>/corral`` where it can, and removes the empty run
    cgroups that corral processes which are gone left there.
    """
    try:
        memberships = parse_proc_cgroup((proc / "self" / "cgroup").read_text())
        mounts = parse_cgroup_mounts((proc / "self" / "mountinfo").read_text())
    except OSError as exc:
        reason = f"cannot read this process's cgroups: {exc.strerror or exc}"
        return LimitSupport(None, None, {"memory": reason, "cpu": reason})
    found: dict[str, CgroupBase] = {}
    why_not: dict[str, str] = {}
    controllers: tuple[Controller, ...] = ("memory", "cpu")
    for controller in controllers:
        base, reason = _find_base(controller, memberships, mounts)
        if base is not None:
            found[controller] = base
            _sweep(base.path)
        else:
            why_not[controller] = reason
    return LimitSupport(found.get("memory"), found.get("cpu"), why_not)


# --- /proc parsing ------------------------------------------------------------


@dataclass(frozen=True)
class CgroupMount:
    version: Literal[1, 2]
    mountpoint: Path
    root: str  # the cgroup mounted there
    controllers: frozenset[str]  # v1: from the mount options; v2: empty (see cgroup.controllers)
    options: frozenset[str] = frozenset()  # v2: the hierarchy's options (favordynmods, ...)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the v2 (unified) path is under ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        if not names:
            out[""] = path
        for name in names.split(","):
            if name:
                out[name] = path
    return out


def parse_cgroup_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts listed in ``/proc/self/mountinfo``."""
    mounts: list[CgroupMount] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 3 or sep < 5:
            continue
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, mountpoint, root, frozenset(), frozenset(options)))
        elif fstype == "cgroup":
            mounts.append(CgroupMount(1, mountpoint, root, frozenset(options)))
    return mounts


def _unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _own_dir(mount: CgroupMount, path: str) -> Path | None:
    """This process's cgroup directory under ``mount``, if that mount shows it."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return mount.mountpoint / path[len(root) :].lstrip("/")


# --- finding a base -----------------------------------------------------------


def _find_base(
    controller: Controller, memberships: dict[str, str], mounts: list[CgroupMount]
) -> tuple[CgroupBase | None, str]:
    reasons: list[str] = []
    if "" in memberships:
        for mount in (m for m in mounts if m.version == 2):
            own = _own_dir(mount, memberships[""])
            if own is not None:
                base, reason = _v2_base(own, controller)
                if base is not None:
                    return base, ""
                reasons.append(reason)
                break
    if controller in memberships:
        for mount in (m for m in mounts if m.version == 1 and controller in m.controllers):
            own = _own_dir(mount, memberships[controller])
            if own is not None:
                base, reason = _v1_base(own, controller)
                if base is not None:
                    return base, ""
                reasons.append(reason)
                break
    return None, "; ".join(reasons) or f"no cgroup hierarchy with the {controller} controller"


def _v2_base(own: Path, controller: Controller) -> tuple[CgroupBase | None, str]:
    try:
        available = (own / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return None, f"cgroup v2: cannot read {own / 'cgroup.controllers'}: {_reason(exc)}"
    if controller not in available:
        return None, f"cgroup v2: the {controller} controller is not available in {own}"
    base = own / _DIR
    try:
        _enable(own, controller)
        base.mkdir(exist_ok=True)
        _enable(base, controller)
        _probe(base, controller, 2)
    except OSError as exc:
        return None, (
            f"cgroup v2: cannot hand the {controller} controller to a child of {own}: "
            f"{_reason(exc)}"
        )
    return CgroupBase(2, base), ""


def _v1_base(own: Path, controller: Controller) -> tuple[CgroupBase | None, str]:
    base = own / _DIR
    try:
        base.mkdir(exist_ok=True)
        _probe(base, controller, 1)
    except OSError as exc:
        return None, f"cgroup v1: cannot create a {controller} cgroup in {own}: {_reason(exc)}"
    return CgroupBase(1, base), ""


def _enable(directory: Path, controller: Controller) -> None:
    control = directory / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")


def _probe(base: Path, controller: Controller, version: int) -> None:
    """Create a throwaway run cgroup and set the controller's limit in it."""
    probe = base / f"probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        for knob, value in _knobs(version, controller, 1 << 40 if controller == "memory" else 1.0):
            _write_knob(probe, knob, value)
        if not os.access(probe / "cgroup.procs", os.W_OK):
            raise PermissionError(13, "cgroup.procs is not writable")
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _sweep(base: Path) -> None:
    """Remove run cgroups left by corral processes that are gone (empty ones only)."""
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            parts = entry.name.split("-")
            if parts[0] in ("run", "probe") and len(parts) >= 2 and parts[1].isdigit():
                if not Path(f"/proc/{parts[1]}").exists():
                    with contextlib.suppress(OSError):
                        entry.rmdir()


# --- one run's cgroup -----------------------------------------------------------


def _knobs(version: int, controller: Controller, value: float) -> list[tuple[str, str]]:
    """The files to write, in order, to set ``value`` (bytes or CPUs)."""
    if controller == "memory":
        amount = str(int(value))
        if version == 2:
            # Without swap the limit is the whole memory of the run.
            return [("memory.max", amount), ("memory.swap.max?", "0")]
        return [("memory.limit_in_bytes", amount), ("memory.memsw.limit_in_bytes?", amount)]
    quota = max(_MIN_QUOTA_US, round(value * CPU_PERIOD_US))
    if version == 2:
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}")]
    return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]


@dataclass
class RunCgroup:
    """The cgroup directories made for one run (one per hierarchy used)."""

    dirs: list[Path]

    @classmethod
    def create(
        cls, support: LimitSupport, memory_bytes: int | None, cpus: float | None
    ) -> RunCgroup | None:
        """Make the run's cgroups and set the limits; None when no cgroup is used."""
        wanted: list[tuple[CgroupBase, Controller, float]] = []
        if memory_bytes is not None and support.memory is not None:
            wanted.append((support.memory, "memory", memory_bytes))
        if cpus is not None and support.cpu is not None:
            wanted.append((support.cpu, "cpu", cpus))
        if not wanted:
            return None
        name = f"run-{os.getpid()}-{next(_counter)}"
        made = cls([])
        try:
            for base, controller, value in wanted:
                directory = base.path / name
                if directory not in made.dirs:
                    directory.mkdir()
                    made.dirs.append(directory)
                for knob, text in _knobs(base.version, controller, value):
                    _write_knob(directory, knob, text)
        except OSError as exc:
            made.remove()
            raise RunError(f"could not set up the run's cgroup: {exc}") from exc
        return made

    def enter(self, pid: int) -> None:
        """Move ``pid`` into every one of the run's cgroups (its later children follow)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def remove(self) -> bool:
        """Remove the cgroups; False while a process is still in one of them."""
        left: list[Path] = []
        for directory in self.dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(directory)
        self.dirs = left
        return not left


def _write_knob(directory: Path, knob: str, text: str) -> None:
    optional = knob.endswith("?")
    path = directory / knob.rstrip("?")
    if optional and not path.exists():
        return
    path.write_text(text)


def set_address_space_limit(pid: int, limit: int) -> int:
    """RLIMIT_AS of ``pid`` (soft and hard); returns the limit set (never above the hard one)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    return limit
