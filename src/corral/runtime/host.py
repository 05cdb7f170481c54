"""The `host` runtime: a plain process in its own session, containment and run directory."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import RunError
from corral.runtime._base import LaunchSpec, Process
from corral.runtime._children import can_spawn_off_loop, spawn_off_loop
from corral.runtime._contain import MARKER, Containment, contain_support
from corral.runtime._direct import CgroupPopen, DirectRefused, open_cgroup, uses_direct
from corral.runtime._private import (
    MountSupport,
    PrivateMounts,
    mount_support,
    namespace_prefix,
    note_shared_tmp,
    private_mounts,
    tmp_blocked,
)

__all__ = ["HostRuntime", "feed_stdin", "start_process"]


class HostRuntime:
    """Starts the run as a child process on this machine.

    The child leads a new session and starts in a containment of its own (a cgroup
    where corral may make one), so a timeout or kill reaches every process it
    started, ``setsid`` or not. It works in its own directory and sees only
    ``spec.env``. With ``spec.tmp`` it gets that directory as its /tmp where a mount
    namespace can be made (see _private). ``spec.isolation`` is ignored: a host run is
    not isolated.
    """

    name = "host"

    def __init__(self, mounts: MountSupport | None = None) -> None:
        self._mounts = mounts

    @property
    def mounts(self) -> MountSupport:
        if self._mounts is None:
            self._mounts = mount_support()
        return self._mounts

    async def launch(self, spec: LaunchSpec) -> Process:
        containment = contain_for(spec.env, make=False)

        def before() -> None:  # where the process is started (a worker thread)
            spec.cwd.mkdir(parents=True, exist_ok=True)
            if spec.before is not None:
                spec.before()
            containment.make()

        mounts = self._mounts_for(spec)
        in_thread = mounts is not None and can_spawn_off_loop()
        proc = await start_process(
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=spec.stdin,
            containment=containment,
            namespace=self._namespace(spec) if mounts is not None and not in_thread else (),
            mounts=mounts if in_thread else None,
            before=before,
        )
        await feed_stdin(proc, spec.stdin)
        return Process(proc, containment)

    def _mounts_for(self, spec: LaunchSpec) -> PrivateMounts | None:
        """The mounts giving the run its own /tmp (and /app/static), or None where it
        keeps the host's (see _private); the static view checked."""
        if spec.tmp is None:
            return None
        support = self.mounts
        if support.unshare is None:
            note_shared_tmp(support.why_not)
            return None
        why = tmp_blocked(spec.cwd, spec.env, spec.reach)
        if why is not None:
            note_shared_tmp(why)
            return None
        return private_mounts(support, spec.tmp, spec.static)

    def _namespace(self, spec: LaunchSpec) -> list[str]:
        """The same as a command prefix (``unshare`` and a script), for a process started
        on the event loop."""
        assert spec.tmp is not None
        return namespace_prefix(self.mounts, spec.tmp, spec.static, spec.env.get("PWD"))


def contain_for(env: Mapping[str, str], *, make: bool = True) -> Containment:
    """A new containment for a process of the run named by ``CORRAL_RUN_ID`` in ``env``
    (its cgroup made now, or with ``make=False`` by `Containment.make` later)."""
    if make:
        return Containment.create(contain_support(), env.get(MARKER))
    return Containment(contain_support(), env.get(MARKER))


async def start_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin: bytes | None,
    pass_fds: Collection[int] = (),
    containment: Containment | None = None,
    namespace: Sequence[str] = (),
    mounts: PrivateMounts | None = None,
    before: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` leading a new session, stdout and stderr merged, inside
    ``containment`` from its first instruction.

    Shared by the runtimes (the sandbox runtime starts bubblewrap through it).
    With ``stdin`` the child's stdin is a pipe: give the bytes to `feed_stdin`.
    The checks and the fork/exec run in a worker thread where asyncio allows it (see
    _children): a burst of runs then does not hold up the event loop that serves the
    gateway. ``before`` is called first, where the start runs (the run's directory, its
    containment's cgroup). With ``mounts`` (off the loop only) the process is started in a
    mount namespace of its own with those mounts, from a thread made for it.
    """
    command = _command(argv, cwd, env, containment, namespace, mounts)
    stdin_to = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
    options: dict[str, Any] = {
        "cwd": cwd,
        "env": dict(env),
        "stdin": stdin_to,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
        "pass_fds": tuple(pass_fds),
    }

    def start() -> subprocess.Popen[bytes]:
        if before is not None:
            before()
        cgroup = _direct_cgroup(containment)

        spawn = functools.partial(_popen, command, cgroup, options)

        try:
            return spawn() if mounts is None else mounts.start(spawn)
        except (OSError, RunError) as exc:
            if containment is not None:
                containment.discard()
            if isinstance(exc, RunError):
                raise
            raise RunError(f"could not start {argv[0]!r}: {exc.strerror or exc}") from exc
        finally:
            if cgroup is not None:
                os.close(cgroup)

    if mounts is not None and not can_spawn_off_loop():
        raise RunError("private mounts are made only where processes start off the loop")
    if can_spawn_off_loop():
        return await spawn_off_loop(
            start,
            functools.partial(_end_orphan, containment),
            functools.partial(_kill_all, containment),
        )
    if before is not None:
        before()
    whole = command(False)
    try:
        return await asyncio.create_subprocess_exec(
            *whole,
            cwd=cwd,
            env=dict(env),
            stdin=stdin_to,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:
        if containment is not None:
            containment.discard()
        raise RunError(f"could not start {argv[0]!r}: {exc.strerror or exc}") from exc


def _command(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    containment: Containment | None,
    namespace: Sequence[str],
    mounts: PrivateMounts | None = None,
) -> Callable[[bool], list[str]]:
    """What to exec, checked first (a RunError for a missing program, as exec would
    say it, and the containment discarded): a call, so it runs where the start does.
    Its argument: the process is started straight inside the containment's cgroup
    (`CgroupPopen`), so it needs no stub to move it there."""

    def command(direct: bool) -> list[str]:
        whole = list(argv)
        if namespace or mounts or (containment is not None and containment.path is not None):
            try:
                _check_program(whole, cwd, env)
            except RunError:
                if containment is not None:
                    containment.discard()
                raise
            whole = [*namespace, *whole]
        if containment is not None and containment.path is not None and not direct:
            whole = containment.wrap(whole, env.get("PWD"))
        return whole

    return command


def _popen(
    command: Callable[[bool], list[str]], cgroup: int | None, options: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """Start the process: straight inside its cgroup when ``cgroup`` is an fd of it,
    through the containment stub otherwise or when the kernel refuses."""
    if cgroup is not None:
        try:
            return CgroupPopen(command(True), cgroup_fd=cgroup, **options)
        except DirectRefused:  # nothing was started
            pass
    return subprocess.Popen(command(False), **options)


def _direct_cgroup(containment: Containment | None) -> int | None:
    """An fd of the containment's cgroup when the process can be started straight
    inside it (cgroup2 and the clone3 helper; see _direct), else None (the stub)."""
    if containment is None or containment.path is None:
        return None
    if not uses_direct(containment.support.kind):
        return None
    try:
        return open_cgroup(containment.path)
    except OSError:
        return None  # the stub reports what is wrong with the cgroup


def _kill_all(containment: Containment | None, popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL to a child whose start was cancelled and to all it started (no waiting)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    if containment is not None:
        containment.signal_all(signal.SIGKILL)


def _end_orphan(containment: Containment | None, popen: subprocess.Popen[bytes]) -> None:
    """Kill and reap a child whose start was cancelled, with all it started (in a thread:
    nothing else watches it)."""
    _kill_all(containment, popen)
    popen.wait()
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            stream.close()
    if containment is not None:
        containment.signal_all(signal.SIGKILL)
        containment.discard()


def _check_program(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
    """RunError unless ``argv[0]`` names a program that can be started (as exec would
    find it), so a missing program is reported as before the containment stub."""
    if not argv:
        raise RunError("nothing to run: the command is empty")
    program = argv[0]
    if "/" in program:
        candidates = [cwd / program]
    else:
        search = env.get("PATH", os.defpath)
        candidates = [cwd / (d or ".") / program for d in search.split(os.pathsep)]
    found = [path for path in candidates if path.is_file()]
    if any(os.access(path, os.X_OK) for path in found):
        return
    why = "Permission denied" if found else "No such file or directory"
    raise RunError(f"could not start {program!r}: {why}")


async def feed_stdin(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Write the prompt to the child's stdin and close it; a child that ignores stdin is fine."""
    stream = proc.stdin
    if data is None or stream is None:
        return
    try:
        stream.write(data)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
