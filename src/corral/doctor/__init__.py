"""`corral doctor`: check what corral needs here, and say what to fix."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.doctor import credentials as _credentials
from corral.doctor import tools as _tools
from corral.errors import ConfigError, CorralError, RunError
from corral.locate import resolve_project_root
from corral.project import Project, load_project
from corral.runtime import HostRuntime, Isolation, LaunchSpec
from corral.runtime._contain import contain_support
from corral.runtime._direct import probe_direct
from corral.runtime._limits import CgroupMount, detect_limits, parse_cgroup_mounts
from corral.runtime._private import mount_support
from corral.runtime.sandbox import INSTALL_HINT, SandboxRuntime, probe_sandbox
from corral.scheduler.prepare import RUN_ID_BASE, RUN_ID_SPAN
from corral.store import open_store

__all__ = ["Check", "run_checks"]

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


async def run_checks(project_dir: Path | None, env: str | None) -> list[Check]:
    checks = [check_python()]
    project, project_check = _load(project_dir, env)
    checks.append(project_check)
    if project is not None:
        checks += [warning_check(project)] if project.warnings else []
        checks.append(await check_store(project))
        checks += _tools.tool_checks(project)
        checks.append(_credentials.check_credentials(project))
    checks.append(await check_host_runtime())
    checks.append(check_host_tmp())
    moves = check_cgroup_moves()
    checks += [moves] if moves is not None else []
    checks.append(await check_sandbox(project))
    checks.append(check_sandbox_limits(project))
    checks.append(await check_sandbox_walls(project))
    return checks


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "ok", f"Python {version} at {sys.executable}")


def _load(project_dir: Path | None, env: str | None) -> tuple[Project | None, Check]:
    try:
        project = load_project(resolve_project_root(project_dir), env=env)
    except ConfigError as exc:
        detail = f"{len(exc.issues)} problem(s):\n" + "\n".join(f"  {i}" for i in exc.issues)
        return None, Check("project", "fail", detail, "correct the files named above")
    except CorralError as exc:
        return None, Check("project", "fail", str(exc))
    names = ", ".join(project.agents) or "none"
    return project, Check(
        "project", "ok", f"{project.root}: {len(project.agents)} agent(s): {names}"
    )


def warning_check(project: Project) -> Check:
    detail = "\n".join(f"  {w}" for w in project.warnings)
    return Check("project warnings", "warn", f"{len(project.warnings)}:\n{detail}")


async def check_store(project: Project) -> Check:
    try:
        async with await open_store(project.state_url, migrate=False) as store:
            status = await store.migration_status()
            url = store.url
    except CorralError as exc:
        return Check(
            "store", "fail", str(exc), "check [state] url in config.toml or CORRAL_STATE_URL"
        )
    if status.pending:
        return Check(
            "store",
            "warn",
            f"{url}: schema version {status.current} of {status.latest}",
            "run `corral db migrate` (`corral run` also applies pending migrations)",
        )
    return Check("store", "ok", f"{url}: schema version {status.current} (latest)")


async def check_host_runtime() -> Check:
    runtime = HostRuntime()
    began = time.perf_counter()
    try:
        process = await runtime.launch(LaunchSpec(argv=["/bin/true"], cwd=Path("/")))
        code = await process.pump(_discard)
    except CorralError as exc:
        return Check("runtime host", "fail", str(exc))
    elapsed = (time.perf_counter() - began) * 1000
    if code != 0:
        return Check("runtime host", "fail", f"/bin/true exited with {code}")
    return Check("runtime host", "ok", f"spawned a process group in {elapsed:.1f} ms")


def check_host_tmp() -> Check:
    """Whether host runs get a /tmp of their own (docs/sandbox.md, "Scratch space")."""
    support = mount_support()
    if support.unshare is None:
        fix = 'run corral as root, or set [runtime] type = "sandbox" in config.toml'
        return Check("host /tmp", "warn", support.describe(), fix)
    return Check("host /tmp", "ok", support.describe())


def check_cgroup_moves() -> Check | None:
    """Whether a run's processes wait for the kernel to enter their cgroup (cgroup2
    without ``favordynmods``: an RCU grace period per move, often 5-15 ms, paid by every
    process of every run before its program starts). None where runs are not contained
    by cgroup2."""
    support = contain_support()
    if support.kind != "cgroup2" or support.base is None:
        return None
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    direct = probe_direct(support.base)
    return cgroup_moves_check(support.base, parse_cgroup_mounts(mountinfo), direct)


def cgroup_moves_check(
    base: Path, mounts: list[CgroupMount], direct: tuple[bool, str] = (False, "")
) -> Check | None:
    """`check_cgroup_moves` for the cgroup2 mount holding ``base``; ``direct``: whether
    processes start straight inside their cgroups, and how or why not (`probe_direct`)."""
    holding = [m for m in mounts if m.version == 2 and base.is_relative_to(m.mountpoint)]
    if not holding:
        return None
    started, how = direct
    if started:
        return Check(
            "cgroup moves",
            "ok",
            f"a run's processes start inside their cgroups ({how}): none is moved, none "
            "waits for the kernel",
        )
    stub = "processes are moved into their cgroups by a stub" + (f" ({how})" if how else "")
    mount = max(holding, key=lambda m: len(m.mountpoint.parts))
    if "favordynmods" in mount.options:
        return Check(
            "cgroup moves",
            "ok",
            f"{stub}; cgroup2 at {mount.mountpoint} favours dynamic changes: a run's "
            "processes enter their cgroups without waiting",
        )
    return Check(
        "cgroup moves",
        "ok",
        f"{stub}; each waits for the kernel (an RCU grace period, often 5-15 ms) "
        f"to enter its cgroup; `mount -o remount,favordynmods {mount.mountpoint}` "
        '(Linux 6.0 or later) removes the wait: see docs/sandbox.md, "Starting fast"',
    )


def _sandbox_agents(project: Project | None) -> list[str]:
    if project is None:
        return []
    return [n for n, a in project.agents.items() if a.config.runtime.type == "sandbox"]


async def check_sandbox(project: Project | None) -> Check:
    """bubblewrap is installed and makes a sandbox (with and without a network) here."""
    agents = _sandbox_agents(project)
    severity: Status = "fail" if agents else "warn"
    try:
        support = await asyncio.to_thread(probe_sandbox, os.environ.get("PATH"))
    except RunError as exc:
        installed = shutil.which("bwrap") is not None
        fix = "let corral create namespaces (see above and docs/sandbox.md)"
        return Check("runtime sandbox", severity, str(exc), fix if installed else INSTALL_HINT)
    version = await _bwrap_version(support.bwrap)
    users = f"used by {', '.join(agents)}" if agents else "no agent uses the sandbox runtime yet"
    if support.network_error is not None:
        offline = [
            n for n in agents if project and project.agents[n].config.runtime.network == "none"
        ]
        return Check(
            "runtime sandbox",
            "fail" if offline else "warn",
            f"{version} makes sandboxes ({users}), but not without a network "
            f"(--unshare-net): {support.network_error}",
            'use network = "host" or run corral where network namespaces are allowed',
        )
    return Check(
        "runtime sandbox",
        "ok",
        f"{version} makes sandboxes, with and without a network ({users})",
    )


def check_sandbox_limits(project: Project | None) -> Check:
    """Which mechanism enforces sandboxed runs' memory and CPU limits here."""
    support = detect_limits()
    memory = support.memory_mechanism
    if support.memory is None:
        memory += f"; no cgroup: {support.why_not.get('memory', '')}"
    summary = "memory by " + ("a cgroup" if support.memory else "RLIMIT_AS")
    summary += ", cpus " + ("by a cgroup" if support.cpu else "NOT enforced")
    detail = f"{summary}\n  memory: {memory}\n  cpus: "
    if support.cpu_mechanism is not None:
        return Check("sandbox limits", "ok", detail + support.cpu_mechanism)
    detail += f"not enforced (only a cgroup can limit CPU): {support.why_not.get('cpu', '')}"
    if not _sandbox_agents(project):
        return Check("sandbox limits", "ok", detail)
    return Check(
        "sandbox limits",
        "warn",
        detail,
        "give corral a cgroup it can create children in (see docs/sandbox.md, Limits)",
    )


async def check_sandbox_walls(project: Project | None) -> Check:
    """What keeps a sandboxed run out of corral's state here: a uid of its own (corral is
    root), or only the hidden paths (corral is another user)."""
    agents = _sandbox_agents(project)
    if os.geteuid() != 0:
        detail = (
            f"runs are corral's own user (uid {os.geteuid()}): only hidden paths keep them "
            "out of corral's state (this project's .corral and store, the corral home, the "
            "state of the projects run from that home); whatever else this user can read, "
            "a run can read"
        )
        fix = "run corral as root (each run then gets a uid of its own; docs/sandbox.md)"
        return Check("sandbox walls", "warn" if agents else "ok", detail, fix)
    try:
        support = await asyncio.to_thread(probe_sandbox, os.environ.get("PATH"))
        uid = RUN_ID_BASE
        spec = LaunchSpec(
            argv=["/bin/sh", "-c", 'test "$(id -u)" = "$0"', str(uid)],
            cwd=Path("/"),
            isolation=Isolation(uid=uid, gid=uid),
        )
        code = await (await SandboxRuntime(support).launch(spec)).pump(_discard)
    except RunError as exc:
        return Check("sandbox walls", "fail" if agents else "warn", str(exc))
    if code != 0:
        return Check("sandbox walls", "fail" if agents else "warn", f"uid switch exited {code}")
    last = RUN_ID_BASE + RUN_ID_SPAN - 1
    return Check(
        "sandbox walls",
        "ok",
        f"each sandboxed run is a uid of its own ({RUN_ID_BASE}-{last}) with its project's "
        "gid: corral's state (0700/0600) is out of its reach wherever it is",
    )


async def _bwrap_version(bwrap: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        bwrap, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return f"{out.decode().strip() or 'bubblewrap'} ({bwrap})"


async def _discard(_chunk: bytes) -> None:
    return None
