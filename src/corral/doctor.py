"""`corral doctor`: check what corral needs here, and say what to fix."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.errors import ConfigError, CorralError
from corral.locate import resolve_project_root
from corral.project import Project, load_project
from corral.runtime import HostRuntime, LaunchSpec
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
    checks.append(await check_host_runtime())
    checks.append(await check_sandbox(project))
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


async def check_sandbox(project: Project | None) -> Check:
    needed = project is not None and any(
        a.config.runtime.type == "sandbox" for a in project.agents.values()
    )
    severity: Status = "fail" if needed else "warn"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(
            "runtime sandbox",
            severity,
            "bubblewrap (bwrap) is not installed",
            "apt-get install -y bubblewrap",
        )
    proc = await asyncio.create_subprocess_exec(
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--unshare-pid",
        "--die-with-parent",
        "/bin/true",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return Check(
            "runtime sandbox",
            severity,
            f"bwrap is installed but cannot create a sandbox: {err.decode().strip()}",
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
            "or run corral where bubblewrap works",
        )
    detail = "bubblewrap works" + ("" if needed else " (no agent uses the sandbox runtime yet)")
    return Check("runtime sandbox", "ok", detail)


async def _discard(_chunk: bytes) -> None:
    return None
